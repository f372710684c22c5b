"""The columnar read benchmark's Python side (benches/read.rs, section
`columnar`): writes wide Parquet files, says how many bytes of column
chunks a one-column query needs, and runs that query with DuckDB or pyarrow.

    python3 benches/columnar.py write DIR CHUNK_BYTES FILES
    python3 benches/columnar.py needed DIR COLUMN
    python3 benches/columnar.py duckdb|pyarrow DIR COLUMN     (prints seconds)
"""

import glob
import os
import sys
import time

COLUMNS = 40
ROW_GROUPS = 2


def write(out, chunk_bytes, files):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    # float64 columns of random values: a column chunk is 8 bytes a row.
    rows = chunk_bytes // 8
    for f in range(files):
        table = pa.table(
            {
                f"c{i}": pc.random(rows * ROW_GROUPS, initializer=f * COLUMNS + i)
                for i in range(COLUMNS)
            }
        )
        pq.write_table(
            table,
            os.path.join(out, f"part{f}.parquet"),
            row_group_size=rows,
            compression="none",
            use_dictionary=False,
        )


def needed(folder, column):
    import pyarrow.parquet as pq

    total = 0
    for path in sorted(glob.glob(os.path.join(folder, "*.parquet"))):
        meta = pq.ParquetFile(path).metadata
        index = meta.schema.names.index(column)
        for g in range(meta.num_row_groups):
            total += meta.row_group(g).column(index).total_compressed_size
    print(total)


def query(engine, folder, column):
    t = time.time()
    if engine == "duckdb":
        import duckdb

        duckdb.sql(
            f"select sum({column}) from read_parquet('{folder}/*.parquet')"
        ).fetchall()
    else:
        import pyarrow.parquet as pq

        for path in sorted(glob.glob(os.path.join(folder, "*.parquet"))):
            pq.read_table(path, columns=[column])
    print(time.time() - t)


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "write":
        write(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif what == "needed":
        needed(sys.argv[2], sys.argv[3])
    else:
        query(what, sys.argv[2], sys.argv[3])
