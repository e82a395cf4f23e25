"""Customers' movement between segments, computed from the Delta table `rfm` with the
`deltalake` package and pandas (not storepulse): the latest version against an older one,
chosen by version or as the newest at least N days of event time (latest purchase) before
the latest. Prints `# version V` (the older version), then one line per (from, to):
from,to,customers,monetary_then,monetary_now,spent_between, money as exact decimals.

usage: movement.py RFM_URL --version N | --days N
"""
import os
import sys
from decimal import Decimal

import pandas as pd
from deltalake import DeltaTable

COLUMNS = ["user_id", "segment", "monetary", "last_purchase"]


def read(url, version=None):
    return DeltaTable(url, version=version).to_pandas(columns=COLUMNS)


def main():
    url, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    latest = DeltaTable(url).version()
    now = read(url)
    if mode == "--version":
        version = n
    else:
        limit = now["last_purchase"].max() - pd.Timedelta(days=n)
        version = next(
            v
            for v in range(latest, 0, -1)
            if len(t := read(url, v)) and t["last_purchase"].max() <= limit
        )
    then = read(url, version)
    both = now.merge(then, on="user_id", how="outer", suffixes=("_now", "_then"))
    zero = Decimal("0.00")
    both["from"] = both["segment_then"].fillna("(new)")
    both["to"] = both["segment_now"].fillna("(gone)")
    both["m_then"] = [zero if pd.isna(v) else v for v in both["monetary_then"]]
    both["m_now"] = [zero if pd.isna(v) else v for v in both["monetary_now"]]
    print(f"# version {version}")
    for (a, b), g in both.groupby(["from", "to"]):
        m_then = sum(g["m_then"], zero)
        m_now = sum(g["m_now"], zero)
        print(f"{a},{b},{len(g)},{m_then},{m_now},{m_now - m_then}")


if __name__ == "__main__":
    main()
    # Leave without the interpreter's teardown: the readers' native threads have been seen
    # to abort it ("terminate called without an active exception") after the answer.
    sys.stdout.flush()
    os._exit(0)
