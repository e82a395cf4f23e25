"""Reads one Delta table with a reader storepulse did not write: the `deltalake` package
(through pyarrow) or Polars' `read_delta`. Prints one line per row, every value as text
(timestamps as microseconds since the epoch, decimals exactly, null as nothing), columns
in the order given.

usage: read_delta.py deltalake|polars TABLE_URL COLUMN... [--version N]
Storage options for a bucket come from the AWS_* variables.
"""
import os
import sys


def storage_options():
    keys = {
        "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION": "AWS_REGION",
        "AWS_ALLOW_HTTP": "AWS_ALLOW_HTTP",
    }
    opts = {k: os.environ[v] for k, v in keys.items() if v in os.environ}
    return opts or None


def with_deltalake(url, columns, version):
    import pyarrow as pa
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    table = DeltaTable(url, version=version, storage_options=storage_options()).to_pyarrow_table()
    out = []
    for name in columns:
        col = table.column(name)
        if pa.types.is_timestamp(col.type):
            col = pc.cast(col, pa.int64())
        out.append([None if v is None else str(v) for v in pc.cast(col, pa.string()).to_pylist()])
    return out


def with_polars(url, columns, version):
    import polars as pl

    df = pl.read_delta(url, version=version, storage_options=storage_options())
    out = []
    for name in columns:
        s = df.get_column(name)
        if s.dtype.is_temporal() and s.dtype != pl.Date:
            s = s.cast(pl.Int64)
        out.append([None if v is None else str(v) for v in s.cast(pl.Utf8).to_list()])
    return out


def main():
    args = sys.argv[1:]
    version = None
    if "--version" in args:
        i = args.index("--version")
        version = int(args[i + 1])
        del args[i : i + 2]
    reader, url, columns = args[0], args[1], args[2:]
    read = {"deltalake": with_deltalake, "polars": with_polars}[reader]
    cols = read(url, columns, version)
    for row in zip(*cols):
        print(",".join("" if v is None else v for v in row))


if __name__ == "__main__":
    main()
    # Leave without the interpreter's teardown: the readers' native threads have been seen
    # to abort it ("terminate called without an active exception") after the answer.
    sys.stdout.flush()
    os._exit(0)
