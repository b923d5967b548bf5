"""``fleet-coordinator``: run the coordinator, manage its API keys, and make and sign the fleet's model keys."""

from __future__ import annotations

import argparse
import json
import sys

import msgspec

from coordinator import __version__
from coordinator.config import ENV_PREFIX, CoordinatorSettings, load_coordinator_settings
from coordinator.errors import CoordinatorError

DESCRIPTION = f"""\
The FleetEdge coordinator. It ingests every vehicle's telemetry from MQTT exactly once in effect, keeps
live fleet state and serves the ops REST API (OpenAPI at /docs).

With no broker.url set it starts an embedded MQTT broker on loopback, so one command works on a fresh
machine. Settings come from a TOML file (--config) and environment variables
{ENV_PREFIX}__SECTION__KEY. Every key is documented in docs/coordinator-config.md.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleet-coordinator", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"fleet-coordinator {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run ingest and the REST API until SIGINT/SIGTERM",
                         description="Run the coordinator until SIGINT or SIGTERM.")
    run.add_argument("--config", "-c", metavar="FILE", help="coordinator settings (TOML); defaults apply without one")
    run.add_argument("--broker", metavar="URL", help="external broker mqtt://host:port (overrides broker.url)")
    run.add_argument("--store", metavar="FILE", help="SQLite store file (overrides store.path)")
    run.add_argument("--listen", metavar="HOST:PORT", help="REST API address (overrides api.host and api.port)")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="override log_level")

    keys = sub.add_parser("keys", help="create, list and revoke REST API keys",
                          description="Manage the REST API keys kept (hashed) in the store.")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = keys_sub.add_parser("create", help="create a key and print it once",
                                 description="Create an API key with a role and print it. It is shown only now.")
    create.add_argument("--role", choices=["viewer", "operator", "admin"], required=True,
                        help="viewer reads; operator also commands vehicles; admin also manages keys")
    create.add_argument("--name", default="", help="who or what the key is for (shown in the audit log)")
    keys_list = keys_sub.add_parser("list", help="list keys (never their secrets) as JSON")
    revoke = keys_sub.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id", help="the id shown by `keys list` (the part after fe_)")
    for p in (create, keys_list, revoke):
        p.add_argument("--config", "-c", metavar="FILE", help="coordinator settings (TOML), for the store path")
        p.add_argument("--store", metavar="FILE", help="SQLite store file (overrides store.path)")

    models = sub.add_parser("models", help="make the fleet's model-signing key; sign a model for upload",
                            description="Vehicles load only models signed with the fleet's Ed25519 key. Keep the "
                                        "private key offline; give the public key to the coordinator "
                                        "(models.public_key) and every agent ([models] public_key).")
    models_sub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    keygen = models_sub.add_parser("keygen", help="write a new key pair: KEY (private, 0600) and KEY.pub")
    keygen.add_argument("--out", required=True, metavar="KEY", help="private key file to create (never overwritten)")
    sign = models_sub.add_parser("sign", help="sign a model's ONNX file and manifest; print the upload request",
                                 description="Sign a model (its name and version bind to the sha256 of both "
                                             "files) and print the JSON body of POST /v1/models.")
    sign.add_argument("--key", required=True, metavar="KEY", help="the fleet's private key")
    sign.add_argument("--onnx", required=True, metavar="FILE", help="the model's ONNX file")
    sign.add_argument("--manifest", required=True, metavar="FILE", help="its manifest (JSON)")

    show = sub.add_parser("config", help="check a settings file and print the effective settings as JSON")
    show.add_argument("--config", "-c", metavar="FILE", help="coordinator settings (TOML)")
    return parser


def _apply_flags(settings: CoordinatorSettings, args: argparse.Namespace) -> CoordinatorSettings:
    broker, store, api = settings.broker, settings.store, settings.api
    if getattr(args, "broker", None):
        broker = msgspec.structs.replace(broker, url=args.broker)
    if getattr(args, "store", None):
        store = msgspec.structs.replace(store, path=args.store)
    if getattr(args, "listen", None):
        host, _, port = args.listen.rpartition(":")
        if not host or not port.isdigit():
            raise CoordinatorError(f"--listen {args.listen!r}: use HOST:PORT, e.g. 127.0.0.1:8080")
        api = msgspec.structs.replace(api, host=host, port=int(port))
    return msgspec.structs.replace(settings, broker=broker, store=store, api=api)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "models":
        return _models(args)
    try:
        settings = _apply_flags(load_coordinator_settings(args.config), args)
        if args.command == "config":
            print(json.dumps(msgspec.to_builtins(settings), indent=2))
            return 0
        if args.command == "keys":
            return _keys(settings, args)
        import uvloop

        from coordinator.log_format import configure_logging
        from coordinator.service import run_coordinator

        configure_logging(args.log_level or settings.log_level, settings.log_format)

        uvloop.run(run_coordinator(settings))
    except CoordinatorError as exc:
        print(f"fleet-coordinator: {exc}", file=sys.stderr)
        return 2
    return 0


def _keys(settings: CoordinatorSettings, args: argparse.Namespace) -> int:
    from coordinator.auth import Role, create_key, list_keys, revoke_key
    from coordinator.store import open_store

    store = open_store(settings.store)
    try:
        if args.keys_command == "create":
            print(create_key(store, Role(args.role), args.name or args.role))
        elif args.keys_command == "list":
            print(json.dumps(list_keys(store), indent=2))
        elif not revoke_key(store, args.key_id):
            print(f"fleet-coordinator: no active key with id {args.key_id!r}", file=sys.stderr)
            return 1
    finally:
        store.close()
    return 0


def _models(args: argparse.Namespace) -> int:
    import base64
    import os
    from pathlib import Path

    from protocols import (
        MalformedMessage,
        SignatureError,
        decode_manifest,
        generate_key,
        read_key,
        sha256_hex,
        sign,
        signed_message,
    )

    try:
        if args.models_command == "keygen":
            out = Path(args.out)
            private, public = generate_key()
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(private)
            Path(f"{out}.pub").write_bytes(public)
            print(f"wrote {out} (private: keep it offline) and {out}.pub (for models.public_key and the agents' "
                  "[models] public_key)")
            return 0
        onnx, manifest_json = Path(args.onnx).read_bytes(), Path(args.manifest).read_bytes()
        manifest = decode_manifest(manifest_json)
        signature = sign(read_key(args.key), signed_message(manifest.name, manifest.version, sha256_hex(onnx),
                                                             sha256_hex(manifest_json)))
    except FileExistsError as exc:
        print(f"fleet-coordinator: {exc.filename} exists; a key is never overwritten", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"fleet-coordinator: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    except (MalformedMessage, SignatureError) as exc:
        print(f"fleet-coordinator: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"manifest_json": manifest_json.decode(), "onnx_base64": base64.b64encode(onnx).decode(),
                      "signature": signature}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
