"""The database: connection, migrations and the Piccolo tables the schema is checked against."""
