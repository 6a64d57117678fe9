"""``python -m service.gateway``: run the DIMSE gateway, or inspect its queue.

    python -m service.gateway --port 11112 --ae-title FOVEA --destination ORTHANC@127.0.0.1:4242 \\
        --service-url http://127.0.0.1:3000 [--queue DIR] [--stow URL] [--host 0.0.0.0]
    python -m service.gateway status [--queue DIR] [--json]
    python -m service.gateway requeue [--queue DIR]      # dead-lettered items back to pending

The queue defaults to ``<FOVEA_DATA_DIR or ./var>/gateway``; its files are sealed with the installation's
storage key (``FOVEA_STORAGE_KEY``, else ``<data dir>/storage.key``; :mod:`service.at_rest`). The gateway
listens on loopback unless ``--host`` says otherwise (DIMSE has no authentication: expose it only to the
network of the PACS, and name the peers with ``--allow-calling-ae``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from service.at_rest import data_dir
from service.gateway.queue import DurableQueue, QueueLocked

# The serving imports (pynetdicom, OpenCV, highdicom) happen in serve(): ``status`` answers in a fraction
# of a second.

log = logging.getLogger("fovea.gateway")


def _default_queue() -> Path:
    return data_dir() / "gateway"


def _serve_parser() -> argparse.ArgumentParser:
    from service.gateway.forward import Destination

    p = argparse.ArgumentParser(prog="python -m service.gateway",
                                description="Fovea DIMSE gateway: C-STORE SCP with store-and-forward "
                                            "(subcommands: status, requeue)")
    p.add_argument("--port", type=int, default=11112, help="DICOM port to listen on (default 11112)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    p.add_argument("--ae-title", default="FOVEA", help="the gateway's AE title (default FOVEA)")
    p.add_argument("--allow-calling-ae", action="append", default=[], metavar="AET",
                   help="accept associations only from this calling AE title (repeatable; default: any)")
    p.add_argument("--destination", type=Destination.parse, metavar="AET@HOST:PORT",
                   help="where the results are C-STOREd (required unless --stow)")
    p.add_argument("--stow", metavar="URL", help="send results with STOW-RS to URL/studies instead of DIMSE")
    p.add_argument("--service-url", default="http://127.0.0.1:3000", help="the Fovea service")
    p.add_argument("--queue", type=Path, default=None, help="queue folder (default <data dir>/gateway)")
    p.add_argument("--max-attempts", type=int, default=8,
                   help="failures of one stage before an item is dead-lettered (default 8)")
    p.add_argument("--retry-base", type=float, default=2.0, help="first retry delay in seconds (default 2)")
    p.add_argument("--retry-max", type=float, default=300.0, help="longest retry delay in seconds (default 300)")
    p.add_argument("--manufacturer", default="Fovea", help="Manufacturer (0008,0070) of the results")
    return p


def serve(argv: list[str]) -> int:
    """Run the gateway until SIGINT/SIGTERM (module docstring)."""
    from service.at_rest import load_sealer
    from analysis.decode import DecodeLimits
    from service.gateway.analyse import ServiceClient, auth_headers
    from service.gateway.forward import DimseSender, Sender, StowSender
    from service.gateway.queue import Backoff
    from service.gateway.scp import ScpConfig, build_ae
    from service.gateway.worker import Worker, default_builder

    args = _serve_parser().parse_args(argv)
    if args.destination is None and not args.stow:
        print("error: --destination AET@host:port (or --stow URL) is required", file=sys.stderr)
        return 2
    # Only our own INFO lines: third-party INFO/DEBUG logs quote datasets (pynetdicom dumps them, highdicom
    # names the source's UIDs) and pydicom's warnings quote element values. Ours carry queue keys only.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    queue_dir = args.queue or _default_queue()
    queue = DurableQueue(queue_dir, load_sealer())
    try:
        queue.open()
    except QueueLocked as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sender: Sender = StowSender(args.stow) if args.stow else DimseSender(args.destination,
                                                                         calling_ae=args.ae_title)
    client = ServiceClient(args.service_url, headers=auth_headers(os.environ))
    limits = DecodeLimits()  # the check at receipt and the read before the analysis
    worker = Worker(queue, analyse=client.analyze, build=default_builder(manufacturer=args.manufacturer),
                    sender=sender, max_attempts=args.max_attempts, limits=limits,
                    backoff=Backoff(base_s=args.retry_base, max_s=args.retry_max))
    ae, handlers = build_ae(queue, ScpConfig(ae_title=args.ae_title, allowed_calling=tuple(args.allow_calling_ae),
                                             limits=limits), on_queued=worker.wake)
    server = ae.start_server((args.host, args.port), block=False, evt_handlers=handlers)
    thread = threading.Thread(target=worker.run, name="fovea-gateway-worker", daemon=True)
    thread.start()
    counts = queue.counts()
    log.info("gateway %s listening on %s:%d; results to %s; queue %s (%d pending resumed)", args.ae_title,
             args.host, args.port, args.stow or args.destination, queue_dir, counts["pending"])
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("gateway stopping")
    server.shutdown()
    worker.stop()
    thread.join(timeout=30)
    client.close()
    queue.close()
    return 0


def status(argv: list[str]) -> int:
    """Print the queue's counts per state (and the items waiting or dead, with their reasons)."""
    p = argparse.ArgumentParser(prog="python -m service.gateway status",
                                description="Counts of the gateway queue per state")
    p.add_argument("--queue", type=Path, default=None)
    p.add_argument("--json", action="store_true", help="print JSON")
    args = p.parse_args(argv)
    queue = DurableQueue(args.queue or _default_queue())  # read-only: no key, no lock needed
    if not queue.root.is_dir():
        print(f"error: no queue at {queue.root}", file=sys.stderr)
        return 1
    counts = queue.counts()
    dead = sorted(queue.items("dead"), key=lambda i: i.finished_at or 0)
    waiting = [i for i in queue.items("pending") if i.last_error]
    if args.json:
        print(json.dumps({"queue": str(queue.root), "counts": counts,
                          "dead": [{"key": i.key, "reason": i.reason} for i in dead]}, indent=1))
        return 0
    print(f"queue {queue.root}")
    print(f"  pending  {counts['pending']:6d}  (analyse {counts['pending_analyse']}, "
          f"forward {counts['pending_forward']})")
    print(f"  done     {counts['done']:6d}")
    print(f"  dead     {counts['dead']:6d}")
    now = time.time()
    for item in waiting[:10]:
        print(f"  retrying {item.key}  {item.stage}  attempt {item.attempts}  in "
              f"{max(0.0, item.next_attempt_at - now):.0f} s: {item.last_error}")
    for item in dead[-10:]:
        print(f"  dead     {item.key}  {item.reason}")
    return 0


def requeue(argv: list[str]) -> int:
    """Move dead-lettered items back to pending; refuses while a gateway holds the queue."""
    p = argparse.ArgumentParser(prog="python -m service.gateway requeue",
                                description="Move dead-lettered items back to pending (stop the gateway first)")
    p.add_argument("--queue", type=Path, default=None)
    args = p.parse_args(argv)
    queue = DurableQueue(args.queue or _default_queue())
    try:
        with queue:
            print(f"{queue.requeue_dead()} item(s) moved back to pending")
    except QueueLocked as exc:
        print(f"error: {exc} (stop it first)", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["status"]:
        return status(args[1:])
    if args[:1] == ["requeue"]:
        return requeue(args[1:])
    if args[:1] == ["serve"]:
        args = args[1:]
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
