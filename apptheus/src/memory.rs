//! The allocator's old name. TODO(house): export pass: export/ still calls
//! `crate::memory::release_free_heap`; once it calls `crate::allocator`,
//! this module goes (and its lines in xtask/tests/layers/rules.rs).
pub(crate) use crate::allocator::release_free_heap;
