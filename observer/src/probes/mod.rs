pub mod offsets;
