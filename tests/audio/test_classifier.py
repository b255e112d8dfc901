"""The real YAMNet (and user models) on generated audio, through the NumPy front end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.inference.audio import AudioClassifier, LogMelFrontEnd, class_labels, mel_matrix
from agent.inference.config import AudioModelConfig, LogMelConfig
from agent.inference.session import ModelLoadError
from tests.audio import samples
from tests.audio.samples import noise, silence, siren, speech

# Fixtures shared by the audio tests (pytest finds them as module attributes).
catalogue = samples.catalogue
models_dir = samples.models_dir
yamnet = samples.yamnet

WINDOW = 15600
HOP = 7680


def windows(x: np.ndarray) -> list[np.ndarray]:
    return [x[s:s + WINDOW] for s in range(0, len(x) - WINDOW + 1, HOP)]


def scores_of(classifier: AudioClassifier, x: np.ndarray) -> np.ndarray:
    return np.stack([classifier.classify(w) for w in windows(x)])


def ids(catalogue: object) -> dict[str, int]:
    return {info.id: info.index for info in catalogue.audioset()}  # type: ignore[attr-defined]


def top_id(catalogue: object, scores: np.ndarray) -> str:
    by_index = {v: k for k, v in ids(catalogue).items()}
    return by_index[int(np.argmax(scores))]


def test_front_end_constants() -> None:
    fe = LogMelFrontEnd(LogMelConfig())
    assert (fe.win, fe.hop, fe.n_fft, fe.frames) == (400, 160, 512, 96)
    assert fe.window_samples == WINDOW  # 400 + 95 * 160: 0.975 s
    mel = mel_matrix(512, 64, 16000, 125.0, 7500.0)
    assert mel.shape == (257, 64)
    assert not mel[0].any()  # the DC bin carries no weight
    assert (mel > 0).any(axis=0).all()  # every band sees at least one bin
    lm = fe(np.zeros(WINDOW, np.float32))
    assert lm.shape == (96, 64)
    assert np.allclose(lm, np.log(0.001))  # silence sits at the quantized input's floor


def test_speech_is_speech(yamnet: AudioClassifier, catalogue: object, tmp_path: Path) -> None:
    s = scores_of(yamnet, speech(tmp_path))
    speech_idx = ids(catalogue)["speech"]
    assert s[:, speech_idx].max() >= 0.9
    assert np.mean(s[:, speech_idx] >= 0.5) >= 0.7  # most windows of a sentence
    assert top_id(catalogue, s.mean(axis=0)) == "speech"


def test_siren_is_siren_or_alarm(yamnet: AudioClassifier, catalogue: object) -> None:
    # A rising and falling sawtooth: YAMNet calls it Siren and Alarm (both ~0.7-0.98 here).
    s = scores_of(yamnet, siren(4.0))
    i = ids(catalogue)
    siren_like = s[:, [i["siren"], i["alarm"], i["civil_defense_siren"],
                       i["police_car_siren"], i["fire_alarm"]]].max(axis=1)
    assert (siren_like >= 0.5).mean() >= 0.8
    assert top_id(catalogue, s.mean(axis=0)) in {"siren", "alarm"}
    assert s[:, i["speech"]].max() < 0.2


def test_silence_is_silence(yamnet: AudioClassifier, catalogue: object) -> None:
    s = scores_of(yamnet, silence(2.0))
    assert top_id(catalogue, s.mean(axis=0)) == "silence"
    assert s[:, ids(catalogue)["silence"]].min() >= 0.9


def test_white_noise_is_not_speech(yamnet: AudioClassifier, catalogue: object) -> None:
    s = scores_of(yamnet, noise(3.0, rms=0.1))
    i = ids(catalogue)
    assert s[:, i["speech"]].max() < 0.2
    assert top_id(catalogue, s.mean(axis=0)) in {"white_noise", "noise", "static", "waterfall"}


def test_yamnet_model_ref_and_classes(yamnet: AudioClassifier) -> None:
    assert yamnet.num_classes == 521
    assert len(yamnet.model_ref.sha256) == 64
    out = yamnet.classify(noise(0.3))  # shorter than a window: zero-padded, still works
    assert out.shape == (521,)
    assert ((out >= 0) & (out <= 1)).all()


# --------------------------------------------------------------------------- user models

onnx = pytest.importorskip("onnx")


def _save(graph: object, path: Path) -> Path:
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _waveform_model(path: Path, samples: int) -> Path:
    """[1, samples] -> [1, 2]: (mean |x|, max |x|), known outputs for any input."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Abs", ["wave"], ["a"]),
        helper.make_node("ReduceMean", ["a"], ["m"], axes=[1], keepdims=1),
        helper.make_node("ReduceMax", ["a"], ["x"], axes=[1], keepdims=1),
        helper.make_node("Concat", ["m", "x"], ["scores"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "wave",
        [helper.make_tensor_value_info("wave", TensorProto.FLOAT, [1, samples])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 2])],
    )
    return _save(graph, path)


def _image_model(path: Path) -> Path:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["img"], ["scores"], axes=[2, 3], keepdims=0)], "img",
        [helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 3])],
    )
    return _save(graph, path)


def test_waveform_user_model(tmp_path: Path, catalogue: object) -> None:
    path = _waveform_model(tmp_path / "w.onnx", 8000)
    (tmp_path / "w.txt").write_text("Quiet hum\nGlass\n")
    cfg = AudioModelConfig(path=path, type="waveform", labels=str(tmp_path / "w.txt"))
    clf = AudioClassifier("mine", cfg, tmp_path)
    assert clf.window_samples == 8000
    x = np.full(8000, -0.25, np.float32)
    assert np.allclose(clf.classify(x), [0.25, 0.25])
    labels = class_labels("mine", cfg, tmp_path, catalogue)
    assert [(info.id, info.index) for info in labels] == [("quiet_hum", 0), ("glass", 1)]
    assert labels[1].ko == "유리"  # matched to the AudioSet catalogue


def test_logmel_user_model_with_softmax(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["mel"], ["scores"], axes=[1], keepdims=0)], "mel",
        [helper.make_tensor_value_info("mel", TensorProto.FLOAT, [1, 50, 32])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 32])],
    )
    path = _save(graph, tmp_path / "m.onnx")
    cfg = AudioModelConfig(path=path, type="logmel", activation="softmax",
                           logmel=LogMelConfig(n_mels=32, frames=50))
    clf = AudioClassifier("mel", cfg, None)
    assert clf.window_samples == 400 + 49 * 160
    out = clf.classify(noise(1.0))
    assert out.shape == (32,)
    assert abs(float(out.sum()) - 1.0) < 1e-5


def test_wrong_input_shape_names_the_model(tmp_path: Path) -> None:
    path = _image_model(tmp_path / "img.onnx")
    with pytest.raises(ModelLoadError, match=r"model vision_thing: input 'img' has shape "
                                             r"\[1, 3, 224, 224\]"):
        AudioClassifier("vision_thing", AudioModelConfig(path=path), None)
    with pytest.raises(ModelLoadError, match=r"model vision_thing: .*waveform model needs"):
        AudioClassifier("vision_thing", AudioModelConfig(path=path, type="waveform"), None)


def test_missing_and_corrupt_model_files(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"model gone: file .* not found"):
        AudioClassifier("gone", AudioModelConfig(path=tmp_path / "nope.onnx"), None)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf")
    with pytest.raises(ModelLoadError, match="model bad: cannot load"):
        AudioClassifier("bad", AudioModelConfig(path=bad), None)


def test_silero_vad_tells_speech_from_noise(models_dir: Path, tmp_path: Path) -> None:
    from agent.inference.audio import SileroVad

    vad = SileroVad(models_dir / "silero_vad" / "silero_vad.onnx")
    assert max(vad.process(speech(tmp_path))) >= 0.8
    vad.reset()
    assert max(vad.process(noise(2.0, rms=0.05))) < 0.5
    vad.reset()
    assert vad.process(np.zeros(100, np.float32)) == []  # not a whole chunk yet
