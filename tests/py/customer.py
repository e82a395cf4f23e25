"""One customer in given versions of the Delta table `rfm`, read with the `deltalake`
package and pandas (not storepulse). Prints one line per version:
version,latest_purchase_of_all,segment,r_score,f_score,m_score,frequency,monetary
(latest purchase of all customers as an RFC 3339 time to the second, UTC; the customer's
fields empty when they are not in that version).

usage: customer.py RFM_URL USER_ID VERSION...
"""
import os
import sys

from deltalake import DeltaTable

FIELDS = ["segment", "r_score", "f_score", "m_score", "frequency", "monetary"]


def main():
    url, user = sys.argv[1], int(sys.argv[2])
    for version in map(int, sys.argv[3:]):
        t = DeltaTable(url, version=version).to_pandas()
        latest = t["last_purchase"].max().strftime("%Y-%m-%dT%H:%M:%SZ")
        row = t[t["user_id"] == user]
        cells = [str(row.iloc[0][f]) for f in FIELDS] if len(row) else [""] * len(FIELDS)
        print(",".join([str(version), latest] + cells))


if __name__ == "__main__":
    main()
    # As movement.py: leave without the interpreter's teardown.
    sys.stdout.flush()
    os._exit(0)
