"""pytest hooks shared by the benchmark files.

The JSON that ``--benchmark-json`` writes keeps every timed round of every case
(``stats["data"]``): a megabyte per k-bit grid, which nothing here reads (the
report scripts use the summary statistics and ``extra_info``). The rounds are
dropped before the file is written.
"""


def pytest_benchmark_update_json(config, benchmarks, output_json):
    for bench in output_json["benchmarks"]:
        bench["stats"].pop("data", None)
