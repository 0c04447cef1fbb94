"""The SDK in a minute: run functions on an endpoint through the service.

Run with the stack up (`fedcompute dev` in another shell, or `make demo`). Uses the saved login
and ``FEDCOMPUTE_ENDPOINT_ID`` (``fedcompute dev`` sets it for `--run`).
"""

from __future__ import annotations

import os
import platform
import time

from fedcompute import Client, Executor, ShellFunction


def where_am_i() -> str:
    return f"{platform.node()} (pid {os.getpid()})"


def slow_square(x: float) -> float:
    time.sleep(0.01)
    return x * x


def fails() -> None:
    raise ValueError("this function fails on purpose")


def main() -> None:
    endpoint_id = os.environ["FEDCOMPUTE_ENDPOINT_ID"]
    client = Client()
    with Executor(endpoint_id=endpoint_id, client=client) as ex:
        print("ran on:", ex.submit(where_am_i).result())

        start = time.perf_counter()
        squares = list(ex.map(slow_square, range(1000)))
        took = time.perf_counter() - start
        print(f"1,000 tasks of 10 ms: sum {sum(squares):.0f} in {took:.2f}s")

        future = ex.submit(fails)
        try:
            future.result()
        except ValueError as exc:
            print(f"remote exception re-raised locally: {exc!r} (task {future.task_id})")

        shell = ex.submit(ShellFunction("uname -sr && echo {msg}"), msg="from a shell").result()
        print("shell:", shell.stdout.strip().replace("\n", " | "), "rc", shell.returncode)

        task = client.get_task(future.task_id)
        print("task states:", ", ".join(task["timestamps"]))
    status = client.get_endpoint_status(endpoint_id)
    print(f"endpoint {endpoint_id}: {status['status']}, {status['details'].get('workers')} workers")


if __name__ == "__main__":
    main()
