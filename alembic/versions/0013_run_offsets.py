"""jobs and evaluations: byte offsets of the run folder's files already stored; GPU leases
for evaluations (issue 13)

The supervisor stores them in the same transaction as the lines they cover, so a recovery
reads what a dead worker left unread from exactly there: no gap, no duplicate.

Revision ID: 0013
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0004"
branch_labels = None
depends_on = None

COLUMNS = {"jobs": ("log_offset", "metrics_offset"), "evaluations": ("log_offset", "outputs_offset")}


def upgrade() -> None:
    for table, names in COLUMNS.items():
        with op.batch_alter_table(table) as b:
            for name in names:
                b.add_column(sa.Column(name, sa.BigInteger(), nullable=False, server_default="0"))
    with op.batch_alter_table("gpu_leases") as b:
        b.alter_column("job_id", existing_type=sa.Integer(), nullable=True)
        b.add_column(sa.Column("evaluation_id", sa.Integer(), nullable=True))
        b.create_foreign_key("fk_gpu_leases_evaluation_id", "evaluations", ["evaluation_id"], ["id"],
                             ondelete="CASCADE")
        b.create_index("ix_gpu_leases_evaluation_id", ["evaluation_id"])


def downgrade() -> None:
    with op.batch_alter_table("gpu_leases") as b:
        b.drop_index("ix_gpu_leases_evaluation_id")
        b.drop_constraint("fk_gpu_leases_evaluation_id", type_="foreignkey")
        b.drop_column("evaluation_id")
        b.alter_column("job_id", existing_type=sa.Integer(), nullable=False)
    for table, names in COLUMNS.items():
        with op.batch_alter_table(table) as b:
            for name in reversed(names):
                b.drop_column(name)
