-- Tag listings read only names in sort order: with the name in the index, a page is one
-- range scan of the index and never touches the table.
CREATE INDEX tags_listing ON tags(repo_id, sort_key, name);
DROP INDEX tags_order;
