"""HakuRiver's event catalogue and the append-only DuckDB log it lives in."""
