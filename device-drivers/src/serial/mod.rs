//! Serial device protocols (issue #4 fills this in).
