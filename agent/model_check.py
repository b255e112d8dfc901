"""``edge-agent check-config --models``: load each model the configuration uses, before a run.

The quick check (``check-config``) validates the YAML only; a model whose file is missing,
whose outputs match no layout or whose label file has the wrong number of names is otherwise
found when the agent starts. This loads every model a source uses, and every model listed
under ``models:`` in the file, the way the agent will, and returns one line per problem.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.inference.session import ModelLoadError
from agent.labels import LabelCatalogue, LabelCatalogueError

if TYPE_CHECKING:
    from agent.config import AgentConfig


def _wanted(config: AgentConfig) -> tuple[list[str], list[str]]:
    """Detector and audio model names to load: used by an enabled source, or listed."""
    models = config.models
    detectors = {c.model for c in config.cameras if c.enabled}
    detectors |= {c.classify.model for c in config.cameras
                  if c.enabled and c.classify is not None and c.classify.model is not None}
    audio = {m.model for m in config.microphones if m.enabled}
    if "detectors" in models.model_fields_set:
        detectors |= set(models.detectors)
    if "audio" in models.model_fields_set:
        audio |= set(models.audio)
    # Names no source can resolve are reported by the quick check already.
    return (sorted(d for d in detectors if d in models.detectors),
            sorted(a for a in audio if a in models.audio))


def check_models(config: AgentConfig) -> list[str]:
    """Problems with the models ``config`` uses, one line each (empty when all load)."""
    from agent.inference.audio import AudioClassifier, class_labels
    from agent.inference.loader import load_vision_model

    models = config.models
    problems: list[str] = []
    detectors, audio = _wanted(config)
    for name in detectors:
        try:
            load_vision_model(name, models.detectors[name], models.dir)
        except (ModelLoadError, LabelCatalogueError) as exc:
            problems.append(f"models.detectors.{name}: {exc}")
    if not audio:
        return problems
    try:
        catalogue = LabelCatalogue.load(models.labels_dir)
    except LabelCatalogueError as exc:
        return [*problems, f"models.dir: {exc}"]
    for name in audio:
        model = models.audio[name]
        try:
            classifier = AudioClassifier(name, model, models.dir)
            labels = class_labels(name, model, models.dir, catalogue)
        except (ModelLoadError, LabelCatalogueError) as exc:
            problems.append(f"models.audio.{name}: {exc}")
            continue
        if classifier.num_classes != len(labels):
            problems.append(f"models.audio.{name}: model {name}: {classifier.num_classes} "
                            f"outputs but {len(labels)} labels ({model.labels})")
    return problems
