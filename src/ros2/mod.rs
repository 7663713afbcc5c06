//! A ROS 2 node (feature `ros2`), in pure Rust on `ros2-client` + RustDDS: builds with plain cargo
//! and needs no ROS install, yet talks to stock ROS 2 Humble/Jazzy over DDS.
//!
//! | module | concern |
//! |--------|---------|
//! | [`msgs`] | ROS 2 message/service types and their CDR layouts |
//! | [`image_in`] | `sensor_msgs/Image` → RGB8 frames, a latest-wins [`crate::camera::FrameSource`] |
//! | [`runner`] | the inference loop on the library pieces: frames + prompts in, one callback per frame out |
//! | [`publish`] | `mask`, `detections`, `mask/compressed`, `overlay`, `status` |
//! | [`node`] | node name, namespace, remapping, QoS, prompt topic and `set_prompt` service |
//!
//! Usage and interop notes: `board/README.md` (section "ROS 2").

pub mod image_in;
pub mod msgs;
pub mod node;
pub mod publish;
pub mod runner;
