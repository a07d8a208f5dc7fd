"""moto's server, answering one request at a time.

moto's DynamoDB checks a write's condition and then writes, with no lock, and `moto_server`
serves each connection on its own thread: two concurrent `PutItem`s with
`attribute_not_exists(sk)` on the same key can then both pass their check, and the second
silently overwrites the first. Real DynamoDB never lets both succeed, and the runtime's
exactly-once transitions rest on that (a lost race must be reported as lost). Serving one
request at a time makes every moto operation atomic, as DynamoDB's single-item writes and
transactions are. moto holds Python's GIL for its work anyway, so little throughput is lost.
SQS's ReceiveMessage (a long poll) is the exception: it runs beside the others.

Usage: python moto_serial.py -H HOST -p PORT   (the same options as `moto_server`)
"""

import argparse
import contextlib
import os
import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple


def serial(app):
    lock = threading.Lock()

    def wrapped(environ, start_response):
        # SQS long polls wait up to 20 s for a message: one must not hold up every other
        # request. Receives racing each other only make a delivery at-least-once, as SQS's are.
        receive = environ.get("HTTP_X_AMZ_TARGET") == "AmazonSQS.ReceiveMessage" or "Action=ReceiveMessage" in (
            environ.get("QUERY_STRING", "")
        )
        with contextlib.nullcontext() if receive else lock:
            body = app(environ, start_response)
            try:
                return [b"".join(body)]
            finally:
                close = getattr(body, "close", None)
                if close is not None:
                    close()

    return wrapped


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=int(os.environ.get("MOTO_PORT", 5000)))
    args = parser.parse_args()
    os.environ.setdefault("MOTO_PORT", str(args.port))
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(args.host, args.port, serial(app), threaded=True)


if __name__ == "__main__":
    main()
