//! (empty: filled by its issue)
