-- The scratch service's one table (tests/scratch_service.rs): its build reads the row.
CREATE TABLE scratch_greetings (
    id   integer PRIMARY KEY,
    text text NOT NULL
);
INSERT INTO scratch_greetings (id, text) VALUES (1, 'hello from scratch');
