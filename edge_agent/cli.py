"""``fleet-agent``: run the edge agent on a vehicle computer."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

import msgspec

from edge_agent import __version__
from edge_agent.config import ENV_PREFIX, load_agent_settings
from edge_agent.errors import AgentError

DESCRIPTION = f"""\
The FleetEdge edge agent. It records the vehicle's telemetry into a durable SQLite outbox and syncs it
to the coordinator over MQTT whenever a link exists; nothing is deleted before the broker acknowledges it.

Settings come from a TOML file (--config) and environment variables {ENV_PREFIX}__SECTION__KEY, which
override the file (e.g. {ENV_PREFIX}__MQTT__URL=mqtts://broker:8883). Every key is documented in
docs/agent-config.md.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleet-agent", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"fleet-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the agent until SIGINT/SIGTERM",
                         description="Run the agent: record, keep and sync telemetry until SIGINT or SIGTERM.")
    run.add_argument("--config", "-c", metavar="FILE", required=True, help="agent settings (TOML)")
    run.add_argument("--profile", "-p", metavar="NAME",
                     help="hardware profile to start from; the --config file overrides its keys (see `profiles`)")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                     help="override the log_level setting")

    show = sub.add_parser("config", help="check a settings file and print the effective settings as JSON",
                          description="Load FILE plus environment overrides, check every key, and print the "
                                      "effective settings as JSON. Exits 2 naming the key if one is wrong.")
    show.add_argument("--config", "-c", metavar="FILE", required=True, help="agent settings (TOML)")
    show.add_argument("--profile", "-p", metavar="NAME", help="hardware profile under the file")

    doctor = sub.add_parser("doctor", help="check this computer for the agent; say how to fix what is wrong",
                            description="Check the serial devices (present, readable and writable), clock "
                                        "synchronisation, free disk against the outbox cap, the broker (reachable, "
                                        "TLS, credentials), the ONNX execution providers and models, and the "
                                        "hardware profile. Prints each finding with a fix; exits 1 if any failed.")
    doctor.add_argument("--config", "-c", metavar="FILE", required=True, help="agent settings (TOML)")
    doctor.add_argument("--profile", "-p", metavar="NAME", help="hardware profile under the file")

    sub.add_parser("profiles", help="list the shipped hardware profiles",
                   description="List the hardware profiles that --profile accepts, with what each is for.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "profiles":
        import hw_profiles

        for name in hw_profiles.profile_names():
            print(f"{name:24} {hw_profiles.describe(name)}")
        return 0
    try:
        settings = load_agent_settings(args.config, profile=args.profile)
    except AgentError as exc:
        print(f"fleet-agent: {exc}", file=sys.stderr)
        return 2
    if args.command == "config":
        print(json.dumps(msgspec.to_builtins(settings), indent=2))
        return 0
    if args.command == "doctor":
        from edge_agent.doctor import report, run_checks

        return report(run_checks(settings, args.profile), sys.stdout)
    level = (args.log_level or settings.log_level).upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from edge_agent.agent import run_agent

    try:
        asyncio.run(run_agent(settings))
    except AgentError as exc:
        print(f"fleet-agent: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
