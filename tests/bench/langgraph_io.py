"""The I/O-bound benchmark's workload in LangGraph's async API, for comparison with
`shared/runtime/examples/io_bound.rs`: ITEMS model calls (a map step: one `Send` per item)
against the same local server (`model_server`, started here), IN_FLIGHT at once
(`max_concurrency`), each answered after LATENCY ms. Prints the wall time beside the ideal
and the peak RSS of this process.

    python tests/bench/langgraph_io.py target/release/examples/model_server [ITEMS] [IN_FLIGHT] [LATENCY_MS]

Needs `pip install langgraph httpx` (not part of `make test`).
"""
import asyncio
import operator
import resource
import subprocess
import sys
import time
from typing import Annotated, TypedDict

import httpx
from langgraph.graph import END, START, StateGraph
from langgraph.types import Send


class State(TypedDict):
    items: list
    answers: Annotated[list, operator.add]


def main():
    server_bin = sys.argv[1]
    items = int(sys.argv[2]) if len(sys.argv) > 2 else 5000
    in_flight = int(sys.argv[3]) if len(sys.argv) > 3 else 100
    latency = int(sys.argv[4]) if len(sys.argv) > 4 else 200
    server = subprocess.Popen([server_bin, str(latency)], stdout=subprocess.PIPE, text=True)
    addr = server.stdout.readline().strip().removeprefix("listening on ")
    url = f"http://{addr}/v1/chat/completions"

    async def run():
        limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:

            async def ask(state):
                r = await client.post(url, json={
                    "model": "m", "max_tokens": 5,
                    "messages": [{"role": "user", "content": f"Item {state['item']}"}],
                })
                return {"answers": [r.json()["choices"][0]["message"]["content"]]}

            def fan_out(state):
                return [Send("ask", {"item": i}) for i in state["items"]]

            g = StateGraph(State)
            g.add_node("ask", ask)
            g.add_conditional_edges(START, fan_out, ["ask"])
            g.add_edge("ask", END)
            graph = g.compile()
            t = time.perf_counter()
            out = await graph.ainvoke({"items": list(range(items)), "answers": []},
                                      config={"max_concurrency": in_flight, "recursion_limit": 10})
            took = time.perf_counter() - t
            assert len(out["answers"]) == items, len(out["answers"])
            return took

    try:
        took = asyncio.run(run())
    finally:
        server.kill()
    ideal = -(-items // in_flight) * latency / 1000
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"langgraph: {items} model calls, {in_flight} in flight, {latency} ms each: {took:.2f} s "
          f"(ideal {ideal:.2f} s, {100 * (took / ideal - 1):+.1f}%), peak RSS {rss:.0f} MB")


if __name__ == "__main__":
    main()
