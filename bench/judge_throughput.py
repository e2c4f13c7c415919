"""Judge throughput: 500 ratings through the OpenAI-compatible judge at concurrency 32 against
a local server answering in 100 ms, compared with the ideal concurrency/latency limit
(32 / 0.1 s = 320 ratings/s; target >= 80%), then a fully cached rerun that must make zero
requests. The server runs in its own process so it does not compete for the client's GIL.

A warm-up run (imports, first connections) is not counted. Beside each judged run, a bare
aiohttp client posts the same request bodies at the same concurrency: the floor this server
and machine allow, so the judge's share of it is a ratio measured under the same load.

    .venv/bin/python bench/judge_throughput.py
    .venv/bin/python bench/judge_throughput.py --n 500 --concurrency 32 --latency 0.1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hal_core.dialogue import SpeakerTags  # noqa: E402
from hal_core.judges import OpenAIJudgeConfig, build_judge, rate_cached  # noqa: E402
from hal_core.questionnaire import Questionnaire  # noqa: E402
from hal_core.rating_cache import RatingCache  # noqa: E402
from hal_core.settings import HalSettings  # noqa: E402


def _dialogues(n: int) -> list[str]:
    """Real Turing-test conversations when the data folder is there, else synthetic ones."""
    settings = HalSettings()
    tags = SpeakerTags.turing()
    if settings.data_dir is not None and Path(settings.data_dir).is_dir():
        import pandas as pd

        from hal_core.dialogue import has_rated_speaker

        texts = pd.read_csv(settings.data_path("turing/conversations_full.csv"))["conversation"]
        unique = [t for t in dict.fromkeys(texts.dropna()) if has_rated_speaker(t, tags)]
        if len(unique) >= n:
            return unique[:n]
    return [f"I: hello, who are you? ({i})\nW: hey im sam lol\nI: ok\nW: bye" for i in range(n)]


def _questionnaire() -> Questionnaire:
    settings = HalSettings()
    if settings.data_dir is not None and Path(settings.data_dir).is_dir():
        return Questionnaire.load(settings.data_path("questionnaires/hal32q.json"))
    from hal_core.questionnaire import Trait

    return Questionnaire(
        name="synthetic16",
        traits=tuple(Trait(id=f"t{i:02d}", text=f"Statement {i}.") for i in range(1, 17)),
    )


def _start_server(latency: float) -> tuple[subprocess.Popen, int]:
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.openai_server", "--latency", str(latency)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    line = server.stdout.readline().split()
    if not line or line[0] != "READY":
        server.kill()
        raise RuntimeError(f"fake server did not start: {line}")
    return server, int(line[1])


def _requests(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/_stats", timeout=10) as response:
        return int(json.load(response)["requests"])


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc), or NaN elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _bare_transport_run(bodies: list[bytes], port: int, concurrency: int) -> float:
    """Seconds for a bare aiohttp client to post ``bodies`` at ``concurrency``."""
    import asyncio

    import aiohttp

    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    headers = {"content-type": "application/json"}

    async def post_all() -> float:
        semaphore = asyncio.Semaphore(concurrency)
        connector = aiohttp.TCPConnector(limit=2 * concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def post(body: bytes) -> None:
                async with semaphore, session.post(url, data=body, headers=headers) as reply:
                    await reply.read()

            started = time.perf_counter()
            await asyncio.gather(*(post(body) for body in bodies))
            return time.perf_counter() - started

    return asyncio.run(post_all())


def _request_bodies(dialogues, questionnaire, tags) -> list[bytes]:
    from hal_core.judges.prompting import rating_messages, render_dialogue

    return [
        json.dumps(
            {
                "model": "bench-judge",
                "messages": rating_messages(
                    render_dialogue(text, tags, False), questionnaire, tags
                ),
            }
        ).encode()
        for text in dialogues
    ]


def _timed_run(judge, dialogues, questionnaire, tags, cache, port: int, server_pid: int) -> dict:
    before, server_cpu = _requests(port), _cpu_seconds(server_pid)
    started, cpu = time.perf_counter(), time.process_time()
    run = rate_cached(judge, dialogues, questionnaire, tags, cache)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {
        "run": run,
        "elapsed_s": elapsed,
        "client_cpu_s": cpu,
        "server_cpu_s": _cpu_seconds(server_pid) - server_cpu,
        "requests": _requests(port) - before,
        "load_avg_1m": os.getloadavg()[0],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="ratings (distinct dialogues)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.1, help="server seconds per request")
    parser.add_argument("--target", type=float, default=0.8, help="fraction of the limit")
    parser.add_argument(
        "--repeat", type=int, default=5, help="fresh-cache runs; the median is judged"
    )
    parser.add_argument("--transport", choices=["aiohttp", "httpx"], default="aiohttp")
    args = parser.parse_args()

    dialogues = _dialogues(args.n)
    questionnaire = _questionnaire()
    tags = SpeakerTags.turing()
    limit = args.concurrency / args.latency
    server, port = _start_server(args.latency)
    runs = []
    try:
        config = OpenAIJudgeConfig(
            model="bench-judge",
            base_url=f"http://127.0.0.1:{port}/v1",
            concurrency=args.concurrency,
            timeout_s=30,
            http_transport=args.transport,
        )
        judge = build_judge(config, api_key="bench-key")
        bodies = _request_bodies(dialogues, questionnaire, tags)
        with (
            tempfile.TemporaryDirectory() as folder,
            RatingCache(Path(folder) / "c.sqlite") as cache,
        ):
            _timed_run(judge, dialogues[:64], questionnaire, tags, cache, port, server.pid)
        _bare_transport_run(bodies[:64], port, args.concurrency)
        for attempt in range(args.repeat):
            bare_s = _bare_transport_run(bodies, port, args.concurrency)
            with (
                tempfile.TemporaryDirectory() as folder,
                RatingCache(Path(folder) / "c.sqlite") as cache,
            ):
                fresh = _timed_run(judge, dialogues, questionnaire, tags, cache, port, server.pid)
                fresh["bare_per_s"] = len(bodies) / bare_s
                runs.append(fresh)
                stats = fresh["run"].stats
                throughput = stats.rated / fresh["elapsed_s"]
                print(
                    f"run {attempt + 1}: {stats.rated} rated, {stats.failed} failed, "
                    f"{fresh['requests']} requests in {fresh['elapsed_s']:.2f} s = "
                    f"{throughput:.0f}/s ({100 * throughput / limit:.1f}% of {limit:.0f}/s; "
                    f"bare aiohttp {fresh['bare_per_s']:.0f}/s); "
                    f"client CPU {1000 * fresh['client_cpu_s'] / max(fresh['requests'], 1):.2f} "
                    f"ms/request, server CPU {fresh['server_cpu_s']:.2f} s, p50/p95 latency "
                    f"{stats.latency_quantile(0.5):.3f}/{stats.latency_quantile(0.95):.3f} s, "
                    f"load {fresh['load_avg_1m']:.1f}"
                )
                if attempt == args.repeat - 1:
                    cached = _timed_run(
                        judge, dialogues, questionnaire, tags, cache, port, server.pid
                    )
    finally:
        server.terminate()
        server.wait(timeout=10)

    throughputs = sorted(r["run"].stats.rated / r["elapsed_s"] for r in runs)
    median = throughputs[len(throughputs) // 2]
    of_bare = sorted(r["run"].stats.rated / r["elapsed_s"] / r["bare_per_s"] for r in runs)
    failures = sum(r["run"].stats.failed for r in runs)
    report = {
        "ratings_per_run": args.n,
        "traits": len(questionnaire.traits),
        "concurrency": args.concurrency,
        "server_latency_s": args.latency,
        "transport": args.transport,
        "limit_per_s": round(limit, 1),
        "throughput_per_s": [round(t, 1) for t in throughputs],
        "median_fraction_of_limit": round(median / limit, 3),
        "best_fraction_of_limit": round(throughputs[-1] / limit, 3),
        "bare_aiohttp_per_s": sorted(round(r["bare_per_s"], 1) for r in runs),
        "median_fraction_of_bare_aiohttp": round(of_bare[len(of_bare) // 2], 3),
        "failures": failures,
        "cached_rerun_s": round(cached["elapsed_s"], 3),
        "cached_rerun_requests": cached["requests"],
        "cached_rerun_hits": cached["run"].stats.cache_hits,
        "cpus": os.cpu_count(),
    }
    print(json.dumps(report, indent=2))
    ok = median / limit >= args.target and cached["requests"] == 0 and failures == 0
    print(
        f"{'PASS' if ok else 'FAIL'}: median {median:.0f} ratings/s = {100 * median / limit:.1f}% "
        f"of the {limit:.0f}/s limit (target {100 * args.target:.0f}%); cached rerun made "
        f"{cached['requests']} requests for {cached['run'].stats.cache_hits} cache hits"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
