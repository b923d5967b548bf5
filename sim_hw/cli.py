"""``fleet-sim``: simulated fleets and devices for demos, tests and benchmarks."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from sim_hw import __version__

DESCRIPTION = """\
FleetEdge simulators. `fleet-sim demo` runs a coordinator (with its embedded MQTT broker) and a fleet of
simulated vehicles (MAVLink autopilots, taxis with GPS and driver terminal), each driven by a real edge agent
with its own SQLite outbox and MQTT connection, places orders that dispatch assigns and the vehicles carry
out, and prints what arrives at the coordinator. Nothing outside this machine is contacted.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleet-sim", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"fleet-sim {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="run a coordinator and a simulated fleet until Ctrl-C",
                          description="Run a coordinator with its embedded broker and simulated vehicles, each with "
                                      "a real edge agent, printing progress every 2 s until Ctrl-C.")
    demo.add_argument("--vehicles", type=int, default=6, metavar="N", help="fleet size (default 6)")
    demo.add_argument("--rate-hz", type=float, default=10.0, metavar="HZ",
                      help="position records per vehicle per second (default 10)")
    demo.add_argument("--orders-every", type=float, default=5.0, metavar="SECONDS",
                      help="place an order this often (default 5; 0: none)")
    demo.add_argument("--speedup", type=float, default=4.0, metavar="X",
                      help="simulated vehicles move X times faster than real time (default 4)")
    demo.add_argument("--duration", type=float, metavar="SECONDS",
                      help="stop after this long (default: run until Ctrl-C)")
    demo.add_argument("--workdir", type=Path, default=Path("fleetedge-demo"), metavar="DIR",
                      help="where the coordinator store and the agents' outboxes go (default ./fleetedge-demo)")
    demo.add_argument("--api-port", type=int, default=8080, metavar="PORT",
                      help="REST API port (default 8080; 0: any free)")
    demo.add_argument("--mqtt-port", type=int, default=0, metavar="PORT",
                      help="embedded broker port (default 0: any free port, so a local Mosquitto on 1883 is no bother)")
    demo.add_argument("--seed", type=int, default=1, help="seed of the simulated vehicles (default 1)")
    demo.add_argument("--mix", metavar="KIND=N,...",
                      help="fleet mix, e.g. copter=10,rover=5,taxi=15 (overrides --vehicles; default: copters, taxis "
                           "and rovers in turn)")
    demo.add_argument("--city", default="52.52,13.405", metavar="LAT,LON",
                      help="centre of the simulated city (default 52.52,13.405)")
    demo.add_argument("--broker", metavar="URL",
                      help="use this MQTT broker (mqtt://host:port, a local Mosquitto say) instead of the embedded one")
    demo.add_argument("--store", metavar="REDIS_URL",
                      help="keep the coordinator's state in Redis (redis://host:port/db) instead of SQLite")

    scenario = sub.add_parser(
        "scenario", help="run a seeded scenario headless, faster than real time, and write its report",
        description="Run a scenario file (TOML: fleet, demand, events, link outages and failures to inject) on the "
                    "real stack, headless, and write report.json (fleet KPIs, the plan, a timeline) and kpis.png.")
    scenario.add_argument("file", type=Path, help="the scenario (see sim_hw/scenarios/rush-hour.toml)")
    scenario.add_argument("--out", type=Path, default=Path("scenario-report"), metavar="DIR",
                          help="where report.json and kpis.png go (default ./scenario-report)")
    scenario.add_argument("--workdir", type=Path, metavar="DIR",
                          help="where the store and the outboxes go (default: a fresh temporary directory)")

    vehicle = sub.add_parser(
        "vehicle", help="run one simulated ArduPilot vehicle on UDP, TCP or a serial pty",
        description="Run one simulated vehicle that speaks MAVLink 2 like ArduPilot (heartbeats, streams, "
                    "commands, missions) until Ctrl-C. Point MAVProxy, QGroundControl or an agent at it.")
    vehicle.add_argument("--kind", choices=["copter", "rover"], default="copter", help="vehicle type (default copter)")
    vehicle.add_argument("--listen", action="append", metavar="ENDPOINT",
                         help="udp:HOST:PORT, udpout:HOST:PORT, tcp:HOST:PORT or pty[:BAUD]; repeatable "
                              "(default udp:127.0.0.1:14550)")
    vehicle.add_argument("--pty-link", type=Path, metavar="PATH", help="a stable symlink to the pty device")
    vehicle.add_argument("--speedup", type=float, default=1.0, metavar="X", help="simulated seconds per second")
    vehicle.add_argument("--home", default="52.52,13.405,34", metavar="LAT,LON[,ALT]", help="where it powers up")
    vehicle.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long")
    vehicle.add_argument("--battery", type=float, default=100.0, metavar="PCT",
                         help="state of charge it powers up with, 0-100 (default 100)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "scenario":
        return _scenario(args)
    if args.command == "vehicle":
        from sim_hw.vehicle_cli import VehicleOptions, parse_home, run_vehicle

        try:
            home = parse_home(args.home)
        except ValueError as bad_home:
            print(f"fleet-sim: {bad_home}", file=sys.stderr)
            return 2
        if args.speedup <= 0:
            print("fleet-sim: --speedup must be above 0", file=sys.stderr)
            return 2
        if not 0 <= args.battery <= 100:
            print("fleet-sim: --battery must be 0-100 (percent charge)", file=sys.stderr)
            return 2
        vehicle = VehicleOptions(args.kind, args.listen or ["udp:127.0.0.1:14550"], args.speedup, home,
                                 args.pty_link, args.duration, args.battery)
        try:
            asyncio.run(run_vehicle(vehicle))
        except (OSError, ValueError) as error:
            print(f"fleet-sim: {error}", file=sys.stderr)
            return 1
        return 0
    if args.vehicles < 1 or args.rate_hz <= 0 or args.orders_every < 0 or args.speedup <= 0:
        print("fleet-sim: --vehicles must be at least 1, --rate-hz and --speedup above 0, --orders-every 0 or "
              "more", file=sys.stderr)
        return 2
    from coordinator.errors import CoordinatorError
    from sim_hw.demo import configure_logging, default_options, parse_mix, run_demo
    from sim_hw.vehicle_cli import parse_home

    try:
        mix = parse_mix(args.mix) if args.mix else ()
        city = parse_home(args.city)[:2]
    except ValueError as bad:
        print(f"fleet-sim: {bad}".replace("--home", "--city"), file=sys.stderr)
        return 2
    if args.broker and not args.broker.startswith(("mqtt://", "mqtts://")):
        print(f"fleet-sim: --broker {args.broker!r}: use mqtt://host:port or mqtts://host:port", file=sys.stderr)
        return 2
    if args.store and not args.store.startswith(("redis://", "rediss://", "unix://")):
        print(f"fleet-sim: --store {args.store!r}: use redis://host:port/db", file=sys.stderr)
        return 2
    configure_logging()
    options = default_options(vehicles=args.vehicles, rate_hz=args.rate_hz, duration_s=args.duration,
                              workdir=args.workdir, api_port=args.api_port, mqtt_port=args.mqtt_port, seed=args.seed,
                              orders_every_s=args.orders_every, speedup=args.speedup, mix=mix, city=city,
                              broker_url=args.broker or "", redis_url=args.store or "")
    failures: list[BaseException] = []
    try:
        asyncio.run(run_demo(options))
    except* CoordinatorError as group:
        failures = list(group.exceptions)
    for failure in failures:
        print(f"fleet-sim: {failure}", file=sys.stderr)
    return 1 if failures else 0


def _scenario(args: argparse.Namespace) -> int:
    import tempfile

    from sim_hw.demo import configure_logging
    from sim_hw.scenario import ScenarioError, load_scenario, run_scenario

    try:
        spec = load_scenario(args.file)
    except ScenarioError as bad:
        print(f"fleet-sim: {bad}", file=sys.stderr)
        return 2
    configure_logging()
    with tempfile.TemporaryDirectory(prefix="fleetedge-scenario-") as tmp:
        asyncio.run(run_scenario(spec, args.out, args.workdir or Path(tmp), sys.stdout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
