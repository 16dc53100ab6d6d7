//! rmdistill's engine.
