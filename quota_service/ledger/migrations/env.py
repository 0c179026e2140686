"""alembic environment of the ledger: run by :meth:`quota_service.ledger.store.Ledger.migrate`.

The ledger hands alembic its own open connection (``config.attributes["connection"]``)
inside a transaction it holds (with PostgreSQL's migration advisory lock, so replicas that
start together migrate one at a time); alembic then adds no transaction of its own and the
whole upgrade commits or rolls back as one (SQLite and PostgreSQL both have transactional
DDL). The version table is ``quota_ledger_version``.

For development (``alembic -c <ini> upgrade head --sql`` or ``revision --autogenerate``)
it also runs offline from ``sqlalchemy.url`` in the ini file.
"""

from __future__ import annotations

from alembic import context

from quota_service.ledger.schema import VERSION_TABLE, metadata

config = context.config


def run_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run the ledger migrations through Ledger.migrate() (or offline with --sql)")
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
