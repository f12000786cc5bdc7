pub mod netns;
pub mod servers;
