#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
# Seeds for fuzz_rpc (rpc_fuzzer.cc): lines of JSON-RPC 2.0 messages for the
# methods echo, typed, spec, attach and throw, good and bad.
# Writes tests/fuzz/corpus/rpc/.
import os

def req(method, params=None, id=1):
    import json
    r = {"jsonrpc": "2.0", "id": id, "method": method}
    if params is not None:
        r["params"] = params
    return json.dumps(r, separators=(",", ":"))

seeds = {
    "echo": req("echo", {"a": 1, "b": [1, 2], "c": {"d": None}}),
    "typed_good": req("typed", {"s": "x", "n": 7, "b": True}),
    "typed_bad": "\n".join([req("typed", {"n": -1}), req("typed", {"n": 101}), req("typed", {"s": 5}),
                            req("typed", {"b": "on"}), req("typed", {"zz": 1})]),
    "spec_blk": req("spec", {"type": "blk", "id": "d0", "path": "/x.img", "num-queues": 4, "readonly": True}),
    "spec_bad": "\n".join([req("spec", {"type": "blk", "id": "bad id"}), req("spec", {"type": "blk"}),
                           req("spec", {"type": "blk", "id": "d0", "num-queues": "17"}),
                           req("spec", {"type": "blk", "id": "d0", "path": {"x": 1}}),
                           req("spec", {"type": "blk", "id": "d0", "path": "a\u0000b"}),
                           req("spec", {"type": "blk", "id": "d0", "num-queues": 1.5})]),
    "attach": "\n".join([req("attach", {"id": "d0", "transport": "shm", "path": "/s"}), req("attach", {"id": "d0"})]),
    "batch": "[" + ",".join([req("echo", id=1), '{"jsonrpc":"2.0","method":"echo"}', "7", req("nosuch", id="x")]) + "]",
    "framing_bad": "\n".join(["{bad", "[]", "42", '{"jsonrpc":"1.0","id":1,"method":"echo"}',
                              '{"jsonrpc":"2.0","id":[1],"method":"echo"}', '{"jsonrpc":"2.0","id":1,"method":5}',
                              '{"jsonrpc":"2.0","id":1,"method":"echo","params":[1]}',
                              '{"jsonrpc":"2.0","id":1,"method":"echo","x":1}', "[" * 40, '"\\ud800"']),
    "throw": req("throw", {}),
    "notification": '{"jsonrpc":"2.0","method":"echo"}\n{"jsonrpc":"2.0","method":"typed","params":{"n":1000}}',
}
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "rpc")
os.makedirs(out, exist_ok=True)
for name, text in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(text.encode())
print(f"{len(seeds)} seeds in {out}")
