"""Alembic environment: runs the service's migrations on the connection the store hands over."""

from alembic import context
from sqlalchemy import create_engine

from privacysf.server.tables import Base

config = context.config
target_metadata = Base.metadata


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is None:  # the alembic command line: take the URL from the ini file
        with create_engine(config.get_main_option("sqlalchemy.url", "")).connect() as conn:
            context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
            with context.begin_transaction():
                context.run_migrations()
        return
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
