"""changes

Revision ID: 0005_changes
Revises: 0004
Create Date: 2026-12-04
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0005_changes'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('changes',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('number', sa.BigInteger(), nullable=False),
    sa.Column('title', sa.String(length=300), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('risk', sa.String(length=10), nullable=False),
    sa.Column('plan', sa.Text(), nullable=False),
    sa.Column('backout_plan', sa.Text(), nullable=False),
    sa.Column('action', sa.String(length=100), nullable=False),
    sa.Column('params', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('tier', sa.String(length=20), nullable=False),
    sa.Column('backout_action', sa.String(length=100), nullable=True),
    sa.Column('backout_params', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('backout_tier', sa.String(length=20), nullable=True),
    sa.Column('target', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('agents', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('site_ids', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('pilot_size', sa.Integer(), nullable=False),
    sa.Column('pilot_agent_ids', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('gate_seconds', sa.Double(), nullable=False),
    sa.Column('failure_threshold', sa.Double(), nullable=False),
    sa.Column('batch_size', sa.Integer(), nullable=True),
    sa.Column('timeout', sa.Double(), nullable=False),
    sa.Column('approvals_required', sa.Integer(), nullable=False),
    sa.Column('planned_start', sa.DateTime(timezone=True), nullable=True),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('stage', sa.String(length=10), nullable=True),
    sa.Column('requester_id', sa.String(length=40), nullable=True),
    sa.Column('requester_name', sa.String(length=200), nullable=False),
    sa.Column('started_by', sa.String(length=40), nullable=True),
    sa.Column('started_by_name', sa.String(length=200), nullable=True),
    sa.Column('jobs', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('halted', sa.Boolean(), nullable=False),
    sa.Column('halt_reason', sa.Text(), nullable=True),
    sa.Column('outcome', sa.String(length=20), nullable=True),
    sa.Column('review_comment', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('approved_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('pilot_started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('gate_started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('number')
    )
    with op.batch_alter_table('changes', schema=None) as batch_op:
        batch_op.create_index('ix_change_state', ['state'], unique=False)

    op.create_table('change_approvals',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('change_id', sa.String(length=40), nullable=False),
    sa.Column('approver_id', sa.String(length=40), nullable=False),
    sa.Column('approver_name', sa.String(length=200), nullable=False),
    sa.Column('decision', sa.String(length=10), nullable=False),
    sa.Column('comment', sa.Text(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['change_id'], ['changes.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('change_id', 'approver_id', name='uq_change_approver')
    )
    with op.batch_alter_table('change_approvals', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_change_approvals_change_id'), ['change_id'], unique=False)

    op.create_table('change_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('change_id', sa.String(length=40), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor_name', sa.String(length=200), nullable=True),
    sa.Column('kind', sa.String(length=30), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('data', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.ForeignKeyConstraint(['change_id'], ['changes.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('change_events', schema=None) as batch_op:
        batch_op.create_index('ix_change_event_change', ['change_id', 'id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('change_events', schema=None) as batch_op:
        batch_op.drop_index('ix_change_event_change')

    op.drop_table('change_events')
    with op.batch_alter_table('change_approvals', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_change_approvals_change_id'))

    op.drop_table('change_approvals')
    with op.batch_alter_table('changes', schema=None) as batch_op:
        batch_op.drop_index('ix_change_state')

    op.drop_table('changes')
