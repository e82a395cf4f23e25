"""The same questions as `storepulse run` answers, asked of Polars' streaming engine: the
baseline `benches/pipeline.rs` times `run --max` against (issue 27's `run` target).

Reads the CSV lazily, drops lines without a valid time, order or price, and
computes the daily sales (revenue, items, distinct orders and customers), the same per
category code and per brand, and each customer's first and last purchase, distinct
orders, money and items. Prints the wall time from the query's start (Python's start-up
and `import polars` not counted), the process's peak memory and the row counts.

It repairs the export's column shift and reads ids in float notation as the replayer
does; it does not check every field as the replayer does, nor keep rejected lines, nor
handle late events (issue 27's 3.03 s was measured with a query not kept in the
repository).

With `--separate` each question is collected on its own (the file read four times: issue
27's 3.03 s baseline took about that); without, `collect_all` shares one scan.

usage: polars_baseline.py FILE.csv [--separate]
"""
import resource
import sys
import time

import polars as pl


def main(path, separate):
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
    # The export's column shift (see ../shared/reference: lines without a category id
    # carry the price in `category_code` and the user id in `brand`), repaired as the
    # replayer does; ids in float notation read as a double, as the replayer does.
    shifted = pl.col("category_id").is_null() & pl.col("price").is_null()

    def unshift(moved, own):
        return pl.when(shifted).then(pl.col(moved)).otherwise(pl.col(own))

    def id_of(e):
        return pl.coalesce(
            e.cast(pl.UInt64, strict=False),
            e.cast(pl.Float64, strict=False).cast(pl.UInt64, strict=False),
        )

    events = (
        lf.with_columns(
            pl.col("event_time")
            .str.strptime(pl.Datetime("us"), "%Y-%m-%d %H:%M:%S UTC", strict=False)
            .alias("t"),
            pl.col("order_id").cast(pl.UInt64, strict=False).alias("order"),
            id_of(unshift("brand", "user_id")).alias("user"),
            (unshift("category_code", "price").cast(pl.Float64, strict=False) * 100)
            .round(0)
            .cast(pl.Int64, strict=False)
            .alias("cents"),
            pl.when(shifted).then(None).otherwise(pl.col("category_code")).alias("category_code"),
            pl.when(shifted).then(None).otherwise(pl.col("brand")).alias("brand"),
        )
        .filter(
            pl.col("t").is_not_null()
            & (pl.col("t").dt.year() >= 2000)
            & pl.col("order").is_not_null()
            & pl.col("cents").is_not_null()
        )
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
    queries = [sales("day"), sales("day", "category_code"), sales("day", "brand"), rfm]
    if separate:
        # Each question asked on its own: the file is read once per question.
        frames = [q.collect(engine="streaming") for q in queries]
    else:
        # The four asked together: one scan of the file feeds them all.
        frames = pl.collect_all(queries, engine="streaming")
    wall = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = " ".join(str(f.height) for f in frames)
    print(f"polars {pl.__version__} wall {wall:.3f} peak_mib {peak_mib:.0f} rows {rows}")


if __name__ == "__main__":
    main(sys.argv[1], "--separate" in sys.argv[2:])
