//! A ROS 2 node (feature `ros2`), in pure Rust on `ros2-client` + RustDDS: builds with plain cargo
//! and needs no ROS install, yet talks to stock ROS 2 Humble/Jazzy over DDS. It is a source, a sink
//! and a command path around the library runtime ([`crate::pipeline::live::Runtime`]), not a loop of
//! its own.
//!
//! | module | concern |
//! |--------|---------|
//! | [`msgs`] | ROS 2 message/service types and their CDR layouts |
//! | [`image_in`] | `sensor_msgs/Image` → RGB8 frames, a latest-wins [`crate::camera::FrameSource`] |
//! | [`publish`] | the runtime sink: `mask`, `detections`, `mask/compressed`, `overlay` |
//! | [`control`] | prompt topic and `set_prompt` service → runtime commands |
//! | [`node`] | node name, namespace, remapping, QoS, the loop and `status` |
//!
//! Usage and interop notes: `board/README.md` (section "ROS 2").

pub mod control;
pub mod image_in;
pub mod msgs;
pub mod node;
pub mod publish;
