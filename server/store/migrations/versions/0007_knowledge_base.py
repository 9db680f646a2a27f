"""knowledge base: articles, versions, links, votes, full-text search

Revision ID: 0007_kb
Revises: 0006_problems
Create Date: 2026-12-04

Full-text search: on SQLite an FTS5 table `kb_fts` (rowid = the article's
number) kept in step by triggers; on PostgreSQL a generated tsvector column
`kb_articles.search_vector` with a GIN index.
"""

from alembic import op
import sqlalchemy as sa

revision = '0007_kb'
down_revision = '0006_problems'
branch_labels = None
depends_on = None

# Weights: title and tags first, then the symptom, then cause and resolution.
PG_VECTOR = (
    "setweight(to_tsvector('english'::regconfig, coalesce(title, '')), 'A') || "
    "setweight(to_tsvector('english'::regconfig, replace(coalesce(tags, ''), ',', ' ')), 'A') || "
    "setweight(to_tsvector('english'::regconfig, coalesce(symptom, '')), 'B') || "
    "setweight(to_tsvector('english'::regconfig, coalesce(cause, '')), 'C') || "
    "setweight(to_tsvector('english'::regconfig, coalesce(resolution, '')), 'C')"
)

SQLITE_FTS = [
    "CREATE VIRTUAL TABLE kb_fts USING fts5("
    "title, tags, symptom, cause, resolution, tokenize = 'porter unicode61')",
    "CREATE TRIGGER kb_fts_insert AFTER INSERT ON kb_articles BEGIN "
    "INSERT INTO kb_fts(rowid, title, tags, symptom, cause, resolution) VALUES "
    "(new.number, new.title, replace(new.tags, ',', ' '), new.symptom, new.cause, "
    "new.resolution); END",
    "CREATE TRIGGER kb_fts_delete AFTER DELETE ON kb_articles BEGIN "
    "DELETE FROM kb_fts WHERE rowid = old.number; END",
    "CREATE TRIGGER kb_fts_update AFTER UPDATE OF title, tags, symptom, cause, resolution, "
    "number ON kb_articles BEGIN "
    "DELETE FROM kb_fts WHERE rowid = old.number; "
    "INSERT INTO kb_fts(rowid, title, tags, symptom, cause, resolution) VALUES "
    "(new.number, new.title, replace(new.tags, ',', ' '), new.symptom, new.cause, "
    "new.resolution); END",
]


def upgrade() -> None:
    op.create_table('kb_articles',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('number', sa.BigInteger(), nullable=False),
    sa.Column('title', sa.String(length=300), nullable=False),
    sa.Column('symptom', sa.Text(), nullable=False),
    sa.Column('cause', sa.Text(), nullable=False),
    sa.Column('resolution', sa.Text(), nullable=False),
    sa.Column('tags', sa.Text(), nullable=False),
    sa.Column('visibility', sa.String(length=10), nullable=False),
    sa.Column('site_id', sa.String(length=40), nullable=True),
    sa.Column('state', sa.String(length=10), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('author_id', sa.String(length=40), nullable=True),
    sa.Column('author_name', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('published_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('archived_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('views', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['site_id'], ['sites.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('number')
    )
    with op.batch_alter_table('kb_articles', schema=None) as batch_op:
        batch_op.create_index('ix_kb_site', ['site_id'], unique=False)
        batch_op.create_index('ix_kb_state_visibility', ['state', 'visibility'], unique=False)

    op.create_table('kb_versions',
    sa.Column('article_id', sa.String(length=40), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('title', sa.String(length=300), nullable=False),
    sa.Column('symptom', sa.Text(), nullable=False),
    sa.Column('cause', sa.Text(), nullable=False),
    sa.Column('resolution', sa.Text(), nullable=False),
    sa.Column('tags', sa.Text(), nullable=False),
    sa.Column('visibility', sa.String(length=10), nullable=False),
    sa.Column('site_id', sa.String(length=40), nullable=True),
    sa.Column('editor_id', sa.String(length=40), nullable=True),
    sa.Column('editor_name', sa.String(length=200), nullable=False),
    sa.Column('note', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['article_id'], ['kb_articles.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('article_id', 'version')
    )
    op.create_table('kb_links',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('article_id', sa.String(length=40), nullable=False),
    sa.Column('kind', sa.String(length=10), nullable=False),
    sa.Column('target', sa.String(length=100), nullable=False),
    sa.Column('created_by', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['article_id'], ['kb_articles.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('article_id', 'kind', 'target', name='uq_kb_link')
    )
    with op.batch_alter_table('kb_links', schema=None) as batch_op:
        batch_op.create_index('ix_kb_link_target', ['kind', 'target'], unique=False)

    op.create_table('kb_votes',
    sa.Column('article_id', sa.String(length=40), nullable=False),
    sa.Column('voter', sa.String(length=200), nullable=False),
    sa.Column('helped', sa.Boolean(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['article_id'], ['kb_articles.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('article_id', 'voter')
    )

    if op.get_bind().dialect.name == 'postgresql':
        op.execute(
            f"ALTER TABLE kb_articles ADD COLUMN search_vector tsvector "
            f"GENERATED ALWAYS AS ({PG_VECTOR}) STORED"
        )
        op.execute("CREATE INDEX ix_kb_search ON kb_articles USING gin (search_vector)")
    else:
        for statement in SQLITE_FTS:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("DROP INDEX IF EXISTS ix_kb_search")
    else:
        for name in ('kb_fts_insert', 'kb_fts_delete', 'kb_fts_update'):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute("DROP TABLE IF EXISTS kb_fts")
    op.drop_table('kb_votes')
    with op.batch_alter_table('kb_links', schema=None) as batch_op:
        batch_op.drop_index('ix_kb_link_target')
    op.drop_table('kb_links')
    op.drop_table('kb_versions')
    with op.batch_alter_table('kb_articles', schema=None) as batch_op:
        batch_op.drop_index('ix_kb_state_visibility')
        batch_op.drop_index('ix_kb_site')
    op.drop_table('kb_articles')
