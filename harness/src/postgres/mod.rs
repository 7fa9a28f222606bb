//! PostgreSQL providers, the documented storage Secret, and the database contract check.
