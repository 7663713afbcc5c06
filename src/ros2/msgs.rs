//! The ROS 2 message and service types the node speaks, as serde types whose field order is the
//! ROS 2 CDR layout (XCDR1, little endian, the encoding every stock ROS 2 middleware uses).
//!
//! Layouts follow the message definitions of ROS 2 Humble and Jazzy, which agree for every type
//! here: `builtin_interfaces/Time`, `std_msgs/Header`, `std_msgs/String`, `sensor_msgs/Image`,
//! `sensor_msgs/CompressedImage` and `vision_msgs/Detection2DArray` of vision_msgs 4.x (the
//! version both distributions ship: `BoundingBox2D.center` is a `vision_msgs/Pose2D`, `Detection2D`
//! has no `source_img` and no tracking fields; those belonged to vision_msgs 3.x of Foxy/Galactic).
//!
//! The prompt service is our own `referdino_msgs/srv/SetPrompt` (request `string prompt`; response
//! `bool success`, `string message`). No standard interface has that shape: `std_srvs/SetBool`
//! carries a bool, `std_srvs/Trigger` has an empty request. Its definition ships in
//! `board/ros2/referdino_msgs/` so a stock ROS 2 install can build it with colcon and call the
//! service from the `ros2` command line.
//!
//! Byte payloads (`uint8[] data`) are [`Bytes`]: one length-prefixed block on the wire (serialised
//! with one copy instead of one call per byte), shared behind an `Arc` so a publisher can reuse
//! its buffer from frame to frame.

use std::sync::Arc;

use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use ros2_client::{Message, MessageTypeName, ServiceTypeName};

/// `builtin_interfaces/Time`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Time {
    /// Seconds.
    pub sec: i32,
    /// Nanoseconds within the second, `0..1e9`.
    pub nanosec: u32,
}

impl Time {
    /// The stamp as nanoseconds since the epoch; negative stamps clamp to 0.
    pub fn to_nanos(self) -> u64 {
        if self.sec < 0 {
            return 0;
        }
        self.sec as u64 * 1_000_000_000 + self.nanosec.min(999_999_999) as u64
    }

    /// The inverse of [`Time::to_nanos`] (seconds saturate at `i32::MAX`).
    pub fn from_nanos(ns: u64) -> Self {
        let sec = (ns / 1_000_000_000).min(i32::MAX as u64) as i32;
        Time {
            sec,
            nanosec: (ns % 1_000_000_000) as u32,
        }
    }
}

/// `std_msgs/Header`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Capture time.
    pub stamp: Time,
    /// Coordinate frame of the data.
    pub frame_id: String,
}

/// `uint8[]`: a CDR `sequence<octet>` (u32 length, then the bytes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bytes(pub Arc<Vec<u8>>);

impl Bytes {
    /// Wraps owned bytes.
    pub fn new(v: Vec<u8>) -> Self {
        Bytes(Arc::new(v))
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a byte sequence")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Vec<u8>, A::Error> {
                let mut v = Vec::with_capacity(a.size_hint().unwrap_or(0).min(1 << 24));
                while let Some(b) = a.next_element::<u8>()? {
                    v.push(b);
                }
                Ok(v)
            }
        }
        d.deserialize_byte_buf(V).map(Bytes::new)
    }
}

/// `std_msgs/String`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StringMsg {
    /// The text.
    pub data: String,
}

/// `sensor_msgs/Image`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// Stamp and frame of the capture.
    pub header: Header,
    /// Rows.
    pub height: u32,
    /// Columns.
    pub width: u32,
    /// Pixel encoding (`rgb8`, `bgr8`, `mono8`, `yuv422_yuy2`, …).
    pub encoding: String,
    /// 1 when multi-byte pixels are big endian.
    pub is_bigendian: u8,
    /// Bytes per row.
    pub step: u32,
    /// `step * height` bytes.
    pub data: Bytes,
}

/// `sensor_msgs/CompressedImage`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompressedImage {
    /// Stamp and frame of the capture.
    pub header: Header,
    /// `png`, `jpeg`, …
    pub format: String,
    /// The compressed file.
    pub data: Bytes,
}

/// `vision_msgs/Point2D`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Point2D {
    /// x.
    pub x: f64,
    /// y.
    pub y: f64,
}

/// `vision_msgs/Pose2D`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Pose2D {
    /// Centre.
    pub position: Point2D,
    /// Rotation in radians.
    pub theta: f64,
}

/// `vision_msgs/BoundingBox2D`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct BoundingBox2D {
    /// Centre and rotation, in pixels.
    pub center: Pose2D,
    /// Width in pixels.
    pub size_x: f64,
    /// Height in pixels.
    pub size_y: f64,
}

/// `vision_msgs/ObjectHypothesis`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ObjectHypothesis {
    /// Class: here the referring expression.
    pub class_id: String,
    /// Confidence.
    pub score: f64,
}

/// `geometry_msgs/Point`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// x.
    pub x: f64,
    /// y.
    pub y: f64,
    /// z.
    pub z: f64,
}

/// `geometry_msgs/Quaternion`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Quaternion {
    /// x.
    pub x: f64,
    /// y.
    pub y: f64,
    /// z.
    pub z: f64,
    /// w.
    pub w: f64,
}

impl Default for Quaternion {
    /// The identity rotation (the message definition's default).
    fn default() -> Self {
        Quaternion {
            x: 0.0,
            y: 0.0,
            z: 0.0,
            w: 1.0,
        }
    }
}

/// `geometry_msgs/Pose`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Pose {
    /// Position.
    pub position: Point,
    /// Orientation.
    pub orientation: Quaternion,
}

/// `float64[36]`: a fixed CDR array (no length prefix). serde derives arrays only up to 32.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Covariance(pub [f64; 36]);

impl Default for Covariance {
    fn default() -> Self {
        Covariance([0.0; 36])
    }
}

impl Serialize for Covariance {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(36)?;
        for v in &self.0 {
            t.serialize_element(v)?;
        }
        t.end()
    }
}

impl<'de> Deserialize<'de> for Covariance {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Covariance;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("36 float64")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Covariance, A::Error> {
                let mut c = [0.0; 36];
                for (i, v) in c.iter_mut().enumerate() {
                    *v = a
                        .next_element()?
                        .ok_or_else(|| de::Error::invalid_length(i, &self))?;
                }
                Ok(Covariance(c))
            }
        }
        d.deserialize_tuple(36, V)
    }
}

/// `geometry_msgs/PoseWithCovariance`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PoseWithCovariance {
    /// Pose.
    pub pose: Pose,
    /// Row-major 6x6 covariance.
    pub covariance: Covariance,
}

/// `vision_msgs/ObjectHypothesisWithPose`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ObjectHypothesisWithPose {
    /// Class and score.
    pub hypothesis: ObjectHypothesis,
    /// Unused for 2-D detections (identity pose, zero covariance).
    pub pose: PoseWithCovariance,
}

/// `vision_msgs/Detection2D`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Detection2D {
    /// The source image's header.
    pub header: Header,
    /// Hypotheses (we send one: the object's prompt and the track's score).
    pub results: Vec<ObjectHypothesisWithPose>,
    /// The object's box.
    pub bbox: BoundingBox2D,
    /// The referred object's id (`object.track` in multi-object selection mode).
    pub id: String,
}

/// `vision_msgs/Detection2DArray`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Detection2DArray {
    /// The source image's header.
    pub header: Header,
    /// One per reported object, in mask-label order.
    pub detections: Vec<Detection2D>,
}

/// `referdino_msgs/srv/SetPrompt` request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetPromptRequest {
    /// The referring expression. Bytes that are not UTF-8 arrive as U+FFFD (and the node refuses the
    /// prompt with that reason) rather than failing the request's decoding, which would leave the
    /// caller without any response.
    #[serde(deserialize_with = "lossy_cdr_string")]
    pub prompt: String,
}

/// A CDR string (u32 length counting a trailing NUL, then the bytes) read as bytes and decoded
/// lossily.
fn lossy_cdr_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = String;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_bytes<E: serde::de::Error>(self, b: &[u8]) -> Result<String, E> {
            let b = b.strip_suffix(&[0]).unwrap_or(b);
            Ok(String::from_utf8_lossy(b).into_owned())
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<String, E> {
            Ok(s.trim_end_matches('\0').to_string())
        }
    }
    // The CDR layout of `bytes` (u32 length, then that many bytes) is a string's with its NUL kept.
    d.deserialize_bytes(V)
}

/// `referdino_msgs/srv/SetPrompt` response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetPromptResponse {
    /// Whether the prompt is now active.
    pub success: bool,
    /// Why not, or the caption now in use.
    pub message: String,
}

impl Message for StringMsg {}
impl Message for Image {}
impl Message for CompressedImage {}
impl Message for Detection2DArray {}
impl Message for SetPromptRequest {}
impl Message for SetPromptResponse {}

/// ROS 2 type names (their DDS names are `pkg::msg::dds_::Type_`).
pub mod types {
    use super::*;

    /// `sensor_msgs/msg/Image`.
    pub fn image() -> MessageTypeName {
        MessageTypeName::new("sensor_msgs", "Image")
    }
    /// `sensor_msgs/msg/CompressedImage`.
    pub fn compressed_image() -> MessageTypeName {
        MessageTypeName::new("sensor_msgs", "CompressedImage")
    }
    /// `std_msgs/msg/String`.
    pub fn string() -> MessageTypeName {
        MessageTypeName::new("std_msgs", "String")
    }
    /// `vision_msgs/msg/Detection2DArray`.
    pub fn detection2d_array() -> MessageTypeName {
        MessageTypeName::new("vision_msgs", "Detection2DArray")
    }
    /// `referdino_msgs/srv/SetPrompt`.
    pub fn set_prompt() -> ServiceTypeName {
        ServiceTypeName::new("referdino_msgs", "SetPrompt")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use byteorder::LittleEndian as LE;
    use ros2_client::dds::rustdds::cdr_encoding::{from_bytes, to_vec};

    fn le32(v: u32) -> [u8; 4] {
        v.to_le_bytes()
    }

    #[test]
    fn header_layout() {
        let h = Header {
            stamp: Time { sec: 7, nanosec: 9 },
            frame_id: "cam".into(),
        };
        let b = to_vec::<_, LE>(&h).unwrap();
        // int32 sec, uint32 nanosec, string = u32 length including the NUL, bytes, NUL.
        let mut want = Vec::new();
        want.extend(le32(7));
        want.extend(le32(9));
        want.extend(le32(4));
        want.extend(b"cam\0");
        assert_eq!(b, want);
        let (back, n) = from_bytes::<Header, LE>(&b).unwrap();
        assert_eq!((back, n), (h, want.len()));
    }

    #[test]
    fn image_layout() {
        let img = Image {
            header: Header {
                stamp: Time { sec: 1, nanosec: 2 },
                frame_id: "f".into(),
            },
            height: 2,
            width: 3,
            encoding: "mono8".into(),
            is_bigendian: 0,
            step: 3,
            data: Bytes::new(vec![1, 2, 3, 4, 5, 6]),
        };
        let b = to_vec::<_, LE>(&img).unwrap();
        let mut w = Vec::new();
        w.extend(le32(1));
        w.extend(le32(2));
        w.extend(le32(2));
        w.extend(b"f\0");
        w.extend([0, 0]); // pad to 4 for height
        w.extend(le32(2));
        w.extend(le32(3));
        w.extend(le32(6));
        w.extend(b"mono8\0");
        w.push(0); // is_bigendian
        w.push(0); // pad to 4 for step
        w.extend(le32(3));
        w.extend(le32(6));
        w.extend([1, 2, 3, 4, 5, 6]);
        assert_eq!(b, w);
        let (back, _) = from_bytes::<Image, LE>(&b).unwrap();
        assert_eq!(back, img);
    }

    #[test]
    fn detection_layout() {
        let d = Detection2DArray {
            header: Header::default(),
            detections: vec![Detection2D {
                header: Header::default(),
                results: vec![ObjectHypothesisWithPose {
                    hypothesis: ObjectHypothesis {
                        class_id: "a".into(),
                        score: 0.5,
                    },
                    pose: PoseWithCovariance::default(),
                }],
                bbox: BoundingBox2D {
                    center: Pose2D {
                        position: Point2D { x: 1.0, y: 2.0 },
                        theta: 0.0,
                    },
                    size_x: 3.0,
                    size_y: 4.0,
                },
                id: "7".into(),
            }],
        };
        let b = to_vec::<_, LE>(&d).unwrap();
        // header (4+4+4+1 = 13 bytes, "" is length 1 + NUL), pad 3, detections count,
        // inner header 13, pad 3, results count (offset 36), class_id "a" (len 2 + 2 bytes = 46),
        // pad to 48 for the score, score 8 bytes (56), pose 7 doubles (112) with w = 1, covariance 36
        // doubles (400), bbox 5 doubles (440), id "7" (len 2 + "7\0" = 446).
        assert_eq!(b.len(), 446);
        assert_eq!(&b[16..20], &le32(1));
        assert_eq!(&b[36..40], &le32(1));
        assert_eq!(&b[48..56], &0.5f64.to_le_bytes());
        assert_eq!(&b[104..112], &1.0f64.to_le_bytes());
        assert_eq!(&b[400..408], &1.0f64.to_le_bytes());
        assert_eq!(&b[432..440], &4.0f64.to_le_bytes());
        assert_eq!(&b[440..446], &[2, 0, 0, 0, b'7', 0]);
        let (back, _) = from_bytes::<Detection2DArray, LE>(&b).unwrap();
        assert_eq!(back, d);
    }

    /// A prompt request decodes like a CDR string; bytes that are not UTF-8 still decode (lossily),
    /// so the node can answer the caller instead of dropping the request.
    #[test]
    fn prompt_requests_decode_even_when_not_utf8() {
        let req = SetPromptRequest {
            prompt: "the red cup".into(),
        };
        let b = to_vec::<_, LE>(&req).unwrap();
        assert_eq!(&b[..4], &12u32.to_le_bytes(), "length counts the NUL");
        let (back, _) = from_bytes::<SetPromptRequest, LE>(&b).unwrap();
        assert_eq!(back, req);
        let mut bad = b.clone();
        bad[6] = 0xff;
        let (back, _) = from_bytes::<SetPromptRequest, LE>(&bad).unwrap();
        assert_eq!(back.prompt, "th\u{FFFD} red cup");
    }

    #[test]
    fn time_round_trip() {
        let t = Time {
            sec: 1_700_000_000,
            nanosec: 123_456_789,
        };
        assert_eq!(Time::from_nanos(t.to_nanos()), t);
        assert_eq!(
            Time {
                sec: -1,
                nanosec: 5
            }
            .to_nanos(),
            0
        );
    }

    #[test]
    fn type_names() {
        assert_eq!(
            types::image().dds_msg_type(),
            "sensor_msgs::msg::dds_::Image_"
        );
        assert_eq!(
            types::detection2d_array().dds_msg_type(),
            "vision_msgs::msg::dds_::Detection2DArray_"
        );
    }
}
