-- The snapshot tables, as `storepulse query` shows them. Each is one Parquet file per
-- snapshot. Money is DECIMAL(18,2) built from integer cents; times are UTC.
-- A test creates these tables in DataFusion and compares them with the written files.

-- Sales per UTC day. orders = distinct order ids; customers = distinct non-anonymous
-- customers. is_final: the watermark has passed the day's end plus the allowed lateness.
CREATE TABLE daily_sales (
  day DATE NOT NULL,
  revenue DECIMAL(18, 2) NOT NULL,
  items BIGINT NOT NULL,
  orders BIGINT NOT NULL,
  customers BIGINT NOT NULL,
  is_final BOOLEAN NOT NULL
);

-- Sales per day and category code (NULL = unknown).
CREATE TABLE daily_category_sales (
  day DATE NOT NULL,
  category_code VARCHAR,
  revenue DECIMAL(18, 2) NOT NULL,
  items BIGINT NOT NULL,
  orders BIGINT NOT NULL
);

-- Sales per day and brand (NULL = unknown).
CREATE TABLE daily_brand_sales (
  day DATE NOT NULL,
  brand VARCHAR,
  revenue DECIMAL(18, 2) NOT NULL,
  items BIGINT NOT NULL,
  orders BIGINT NOT NULL
);

-- One row per customer. recency_days: days between the UTC date of the snapshot's as-of
-- time (highest accepted event time) and of the last purchase. Scores are quintiles of
-- PERCENT_RANK over all customers (recency descending, frequency and monetary ascending);
-- segment from rfm_segments.csv.
CREATE TABLE rfm (
  user_id BIGINT UNSIGNED NOT NULL,
  first_purchase TIMESTAMP WITH TIME ZONE NOT NULL,
  last_purchase TIMESTAMP WITH TIME ZONE NOT NULL,
  frequency BIGINT NOT NULL,
  monetary DECIMAL(18, 2) NOT NULL,
  items BIGINT NOT NULL,
  recency_days BIGINT NOT NULL,
  r_score TINYINT NOT NULL,
  f_score TINYINT NOT NULL,
  m_score TINYINT NOT NULL,
  rfm_cell VARCHAR NOT NULL,
  segment VARCHAR NOT NULL
);

-- Raw state beside the tables above, so that a run or a processor can resume from a
-- snapshot. Not for queries; each file's columns are checked against the code's contract
-- before it is read, like the tables'.
--   state_open_sets (day DATE, scope VARCHAR, key VARCHAR NULL, value BIGINT UNSIGNED):
--     days' distinct customers (scope `customer`, key null), sorted by day and customer:
--     open days', and in a Kafka partition every day's (the merged view counts distinct
--     customers across partitions). Snapshots of formats 2 and 3 also hold the open days'
--     orders here (scopes `order`, `category_order`, `brand_order` with the group in key).
--   state_open_orders (day DATE, order_id BIGINT UNSIGNED, category_codes VARCHAR[],
--     brands VARCHAR[]), formats 4 and 5: open days' distinct orders, one row per (day,
--     order) with the category codes and brands (an unknown one null) whose distinct
--     orders counted it, sorted by day and order.
--   state_customer_orders (user_id BIGINT UNSIGNED, order_id BIGINT UNSIGNED): the
--     (customer, order) pairs counted in frequencies.
--   state_seen (source BIGINT UNSIGNED, pass INT UNSIGNED, bitmap BYTEA), Kafka partitions
--     only: the events a partition has counted, one row per input (source: xxh3 of the
--     input's whole content) and pass (`--loop`); bitmap holds the lines as a roaring
--     bitmap in its portable serialization (the RoaringFormatSpec layout, run containers
--     where they are smaller).
