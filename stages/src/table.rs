//! Parquet helpers shared by the table stages.
