"""The same questions as `storepulse run` answers, asked of Polars' streaming engine: the
baseline `benches/pipeline.rs` times `run --max` against (issue 27's `run` target).

Reads the CSV lazily, drops lines without a valid time, order or price, and
computes the daily sales (revenue, items, distinct orders and customers), the same per
category code and per brand, and each customer's first and last purchase, distinct
orders, money and items. Prints the wall time from the query's start (Python's start-up
and `import polars` not counted), the process's peak memory and the row counts.

It does less than `run`: no column-shift repair, no duplicate or late-event handling, and
user ids written in float notation fail its cast, so it finds 36,727 customers in the
full-size generated file where `run` finds 236,735. A faithful baseline is still to be
agreed (issue 27's 3.03 s was measured with a query not kept in the repository).

usage: polars_baseline.py FILE.csv
"""
import resource
import sys
import time

import polars as pl


def main(path):
    start = time.perf_counter()
    lf = pl.scan_csv(
        path,
        schema_overrides={
            "event_time": pl.Utf8,
            "order_id": pl.Utf8,
            "product_id": pl.Utf8,
            "category_id": pl.Utf8,
            "category_code": pl.Utf8,
            "brand": pl.Utf8,
            "price": pl.Utf8,
            "user_id": pl.Utf8,
        },
        truncate_ragged_lines=True,
        # The file has stray quotes (bad lines the replayer rejects): no quoting.
        quote_char=None,
        ignore_errors=True,
        # and bytes that are not UTF-8.
        encoding="utf8-lossy",
    )
    events = (
        lf.with_columns(
            pl.col("event_time")
            .str.strptime(pl.Datetime("us"), "%Y-%m-%d %H:%M:%S UTC", strict=False)
            .alias("t"),
            pl.col("order_id").cast(pl.UInt64, strict=False).alias("order"),
            pl.col("user_id").cast(pl.UInt64, strict=False).alias("user"),
            (pl.col("price").cast(pl.Float64, strict=False) * 100)
            .round(0)
            .cast(pl.Int64, strict=False)
            .alias("cents"),
        )
        .filter(pl.col("t").is_not_null() & pl.col("order").is_not_null() & pl.col("cents").is_not_null())
        .with_columns(pl.col("t").dt.date().alias("day"))
    )

    def sales(*keys):
        return events.group_by(*keys).agg(
            pl.col("cents").sum().alias("revenue"),
            pl.len().alias("items"),
            pl.col("order").n_unique().alias("orders"),
            pl.col("user").drop_nulls().n_unique().alias("customers"),
        )

    rfm = (
        events.filter(pl.col("user").is_not_null())
        .group_by("user")
        .agg(
            pl.col("t").min().alias("first"),
            pl.col("t").max().alias("last"),
            pl.col("order").n_unique().alias("frequency"),
            pl.col("cents").sum().alias("monetary"),
            pl.len().alias("items"),
        )
    )
    frames = pl.collect_all(
        [sales("day"), sales("day", "category_code"), sales("day", "brand"), rfm],
        engine="streaming",
    )
    wall = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = " ".join(str(f.height) for f in frames)
    print(f"polars {pl.__version__} wall {wall:.3f} peak_mib {peak_mib:.0f} rows {rows}")


if __name__ == "__main__":
    main(sys.argv[1])
