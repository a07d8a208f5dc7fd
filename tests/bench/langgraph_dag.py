"""The same DAG in LangGraph's in-memory runtime: a no-op node per task of a workflow file.

Issue 15's cold-path comparison: a 1,000-task workflow run whole process (start, load, plan,
run, exit) by `llmo run --mock` and by LangGraph, side by side:

    target/release/llmo synth --shape layered --tasks 1000 > /tmp/l1k.yaml
    hyperfine -N -w 3 'target/release/llmo run --mock /tmp/l1k.yaml' \
                      'PYTHON tests/bench/langgraph_dag.py /tmp/l1k.yaml'

Each node records an output, as the mock provider's answer is recorded for each of llmo's
tasks; a node with several dependencies waits for all of them (a join edge). The file is one
that `llmo synth` generated (read line by line: `- id:` and `depends_on: [...]`).
Needs `pip install langgraph` (not part of `make test`).
"""

import re
import sys
from typing import Annotated, TypedDict

from langgraph.graph import START, StateGraph


def merge(a: dict, b: dict) -> dict:
    return {**a, **b}


class State(TypedDict):
    outputs: Annotated[dict, merge]


def tasks_of(path: str) -> list[tuple[str, list[str]]]:
    tasks: list[tuple[str, list[str]]] = []
    for line in open(path, encoding="utf-8"):
        if m := re.match(r"\s*- id: (\S+)", line):
            tasks.append((m.group(1), []))
        elif (m := re.match(r"\s*depends_on: \[(.*)\]", line)) and tasks:
            tasks[-1][1].extend(d.strip() for d in m.group(1).split(",") if d.strip())
    return tasks


def node(name: str):
    def run(state: State) -> dict:
        return {"outputs": {name: f"echo: {name}"}}

    return run


def main() -> None:
    tasks = tasks_of(sys.argv[1])
    graph = StateGraph(State)
    for name, _ in tasks:
        graph.add_node(name, node(name))
    for name, deps in tasks:
        if not deps:
            graph.add_edge(START, name)
        elif len(deps) == 1:
            graph.add_edge(deps[0], name)
        else:
            graph.add_edge(deps, name)
    app = graph.compile()
    out = app.invoke({"outputs": {}}, {"recursion_limit": 100_000})
    assert len(out["outputs"]) == len(tasks), (len(out["outputs"]), len(tasks))
    print(f"{len(tasks)} tasks done", file=sys.stderr)


if __name__ == "__main__":
    main()
