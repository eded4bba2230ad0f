"""Runs a Beam service module with every gRPC server bound to 127.0.0.1 instead of all interfaces.

    python -m tests.loopback apache_beam.runners.worker.worker_pool_main --service_port=P
"""

import runpy
import sys

import grpc._server

_add_insecure_port = grpc._server._Server.add_insecure_port


def _loopback_only(self, address):
    return _add_insecure_port(self, address.replace("[::]", "127.0.0.1").replace("localhost", "127.0.0.1"))


grpc._server._Server.add_insecure_port = _loopback_only

if __name__ == "__main__":
    module = sys.argv[1]
    sys.argv = [module] + sys.argv[2:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
