//! End-to-end tests of a technician's day.
