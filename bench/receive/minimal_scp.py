"""The floor for a pynetdicom receiver: a Storage SCP whose handler acknowledges without storing.

    python bench/receive/minimal_scp.py PORT [--poll SECONDS] [--streamed DIR]

Used by ``run.py`` as a reference measured in the same run: no Python receiver built on
pynetdicom (FIONA included) can be faster on one association than this.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
import types

import pynetdicom.association as association
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--poll", type=float, default=None, help="shorten pynetdicom's 1 ms reactor sleeps (as FIONA does)")
    parser.add_argument("--streamed", metavar="DIR", help="receive each dataset into a file in DIR, as FIONA does")
    args = parser.parse_args()
    _config.LOG_HANDLER_LEVEL = "none"
    if args.streamed:
        import tempfile

        _config.STORE_RECV_CHUNKED_DATASET = True  # pynetdicom writes the dataset to a temporary file
        tempfile.tempdir = args.streamed
    if args.poll is not None:
        association.time = types.SimpleNamespace(sleep=lambda s: time.sleep(min(s, args.poll)), time=time.time,
                                                 monotonic=time.monotonic, perf_counter=time.perf_counter)

    def on_open(event):
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if args.poll is not None:
            event.assoc.dul._run_loop_delay = args.poll

    ae = AE(ae_title="BENCH")
    ae.maximum_pdu_size = 0
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    print("listening", flush=True)
    ae.start_server(("127.0.0.1", args.port), evt_handlers=[(evt.EVT_C_STORE, lambda e: 0x0000), (evt.EVT_CONN_OPEN, on_open)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
