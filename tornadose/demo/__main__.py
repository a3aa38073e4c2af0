"""``python -m tornadose.demo [--port 8000] [--address 127.0.0.1] [--interval 1.0]``"""

from __future__ import annotations

import argparse
import asyncio
import logging

from .. import backend
from . import make_app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tornadose.demo", description=__doc__)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between values")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    async def serve() -> None:
        app, ticker = make_app(args.interval)
        app.listen(args.port, args.address)
        ticker.start()
        print(f"tornadose demo ({backend} backend): http://{args.address}:{args.port}/", flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
