"""32 concurrent clients x N requests through the dynamic batcher: every response is correct and belongs to
its own request (no cross-talk), and batching really happened (stats' batch_stats, /metrics)."""

from __future__ import annotations

import asyncio

import numpy as np
import onnxruntime as ort
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient

from tests.conftest import CNN_SHAPE

CLIENTS = 32
REQUESTS = 6


def test_32_concurrent_clients_no_cross_talk(server) -> None:
    model = "tiny_cfg"  # max_batch_size 4, queue delay 2 ms
    sess = ort.InferenceSession(str(server.repo / model / "3" / "model.onnx"), providers=["CPUExecutionProvider"])
    plans = {}
    for c in range(CLIENTS):
        for r in range(REQUESTS):
            batch = 1 + (c + r) % 2  # batches of 1 and 2 mixed in one queue
            x = np.random.default_rng(1000 * c + r).standard_normal((batch, *CNN_SHAPE)).astype(np.float32)
            plans[(c, r)] = (x, sess.run(["logits"], {"input": x})[0])

    stats_client = httpclient.InferenceServerClient(server.hostport)
    # A fresh scheduler: the adaptive batcher remembers per-batch-size costs, and what earlier tests taught it
    # (batch 1 cheapest per image on a loaded CPU) would make coalescing here a matter of luck; a fresh one
    # explores the larger batch sizes first, whenever more than one request is queued.
    stats_client.load_model(model)
    before = stats_client.get_inference_statistics(model, "3")["model_stats"][0]

    async def one_client(c: int) -> list[tuple[int, int, str, np.ndarray]]:
        client = aioclient.InferenceServerClient(server.hostport)
        got = []
        try:
            for r in range(REQUESTS):
                x, _ = plans[(c, r)]
                binary = (c + r) % 3 != 0  # JSON and binary requests interleaved
                inp = aioclient.InferInput("input", list(x.shape), "FP32")
                inp.set_data_from_numpy(x, binary_data=binary)
                out = aioclient.InferRequestedOutput("logits", binary_data=binary)
                res = await client.infer(model, [inp], outputs=[out], request_id=f"{c}/{r}")
                got.append((c, r, res.get_response()["id"], res.as_numpy("logits")))
        finally:
            await client.close()
        return got

    async def run_all():
        return await asyncio.gather(*(one_client(c) for c in range(CLIENTS)))

    results = [item for per_client in asyncio.run(run_all()) for item in per_client]
    assert len(results) == CLIENTS * REQUESTS
    for c, r, rid, logits in results:
        assert rid == f"{c}/{r}"
        x, expected = plans[(c, r)]
        assert logits.shape == expected.shape
        np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)

    after = stats_client.get_inference_statistics(model, "3")["model_stats"][0]
    images = sum(x.shape[0] for x, _ in plans.values())
    assert after["inference_count"] - before["inference_count"] == images
    requests = after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"]
    assert requests == CLIENTS * REQUESTS
    executions = after["execution_count"] - before["execution_count"]
    assert executions < CLIENTS * REQUESTS, "concurrent requests were never coalesced into one session.run"
    assert max(b["batch_size"] for b in after["batch_stats"]) > 2
    assert all(b["batch_size"] <= 4 for b in after["batch_stats"])  # never over max_batch_size
