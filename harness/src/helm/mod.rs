//! The helm driver, chart sources, and the local chart repository.
