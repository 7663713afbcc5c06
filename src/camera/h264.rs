//! Checks of H.264 parameter sets before the C decoder sees them (ITU-T H.264 §7.3.2.1.1, the
//! sequence parameter set syntax): the NAL unit types, and the picture size an SPS declares, which
//! must be within [`crate::limits::MAX_IMAGE_PIXELS`] and equal to the video track's size. A hostile
//! SPS declaring a huge picture is refused here instead of making the decoder allocate for it.
//! Pure Rust and bounded: every field read is checked against the bytes left.

/// What an SPS declares, as far as the checks need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpsInfo {
    /// `profile_idc` (66 baseline, 77 main, 100 high, ...).
    pub profile_idc: u8,
    /// Picture width after the frame cropping, in pixels.
    pub width: u32,
    /// Picture height after the frame cropping, in pixels.
    pub height: u32,
}

/// Reads bits of an RBSP (emulation-prevention bytes already removed).
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn bit(&mut self) -> Result<u32, String> {
        let byte = self
            .data
            .get(self.pos / 8)
            .ok_or_else(|| "SPS ends early".to_string())?;
        let b = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Ok(b as u32)
    }

    fn bits(&mut self, n: u32) -> Result<u32, String> {
        let mut v = 0;
        for _ in 0..n {
            v = (v << 1) | self.bit()?;
        }
        Ok(v)
    }

    /// Unsigned Exp-Golomb (`ue(v)`), at most 32 bits of value.
    fn ue(&mut self) -> Result<u32, String> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return Err("Exp-Golomb code longer than 32 bits".into());
            }
        }
        let rest = self.bits(zeros)?;
        Ok(((1u64 << zeros) - 1 + rest as u64).min(u32::MAX as u64) as u32)
    }

    /// Signed Exp-Golomb (`se(v)`).
    fn se(&mut self) -> Result<i64, String> {
        let k = self.ue()? as i64;
        Ok(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) })
    }

    fn ue_max(&mut self, what: &str, max: u32) -> Result<u32, String> {
        let v = self.ue()?;
        if v > max {
            return Err(format!("{what} = {v} (at most {max})"));
        }
        Ok(v)
    }
}

/// The NAL unit's payload without its header byte and emulation-prevention bytes (`00 00 03`).
fn rbsp(nal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &b in nal.iter().skip(1) {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// Checks a NAL unit's header: forbidden bit clear and the given type.
pub fn check_nal_type(nal: &[u8], want: u8, what: &str) -> Result<(), String> {
    let Some(&h) = nal.first() else {
        return Err(format!("empty {what}"));
    };
    if h & 0x80 != 0 {
        return Err(format!("{what}: forbidden_zero_bit set"));
    }
    if h & 0x1f != want {
        return Err(format!(
            "{what}: NAL unit type {} (expected {want})",
            h & 0x1f
        ));
    }
    Ok(())
}

/// Parses a sequence parameter set NAL unit (header byte included) up to its frame cropping.
pub fn parse_sps(nal: &[u8]) -> Result<SpsInfo, String> {
    check_nal_type(nal, 7, "SPS")?;
    let data = rbsp(nal);
    let mut r = Bits {
        data: &data,
        pos: 0,
    };
    let profile_idc = r.bits(8)? as u8;
    r.bits(16)?; // constraint flags, level_idc
    r.ue_max("seq_parameter_set_id", 31)?;
    let mut chroma_format_idc = 1;
    let mut separate_planes = false;
    if matches!(
        profile_idc,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma_format_idc = r.ue_max("chroma_format_idc", 3)?;
        if chroma_format_idc == 3 {
            separate_planes = r.bit()? == 1;
        }
        r.ue_max("bit_depth_luma_minus8", 6)?;
        r.ue_max("bit_depth_chroma_minus8", 6)?;
        r.bit()?; // qpprime_y_zero_transform_bypass_flag
        if r.bit()? == 1 {
            // seq_scaling_matrix_present_flag: the lists are skipped, value by value.
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.bit()? == 1 {
                    let size = if i < 6 { 16 } else { 64 };
                    let (mut last, mut next) = (8i64, 8i64);
                    for _ in 0..size {
                        if next != 0 {
                            let delta = r.se()?;
                            next = (last + delta).rem_euclid(256);
                        }
                        if next != 0 {
                            last = next;
                        }
                    }
                }
            }
        }
    }
    r.ue_max("log2_max_frame_num_minus4", 12)?;
    match r.ue_max("pic_order_cnt_type", 2)? {
        0 => {
            r.ue_max("log2_max_pic_order_cnt_lsb_minus4", 12)?;
        }
        1 => {
            r.bit()?;
            r.se()?;
            r.se()?;
            let n = r.ue_max("num_ref_frames_in_pic_order_cnt_cycle", 255)?;
            for _ in 0..n {
                r.se()?;
            }
        }
        _ => {}
    }
    r.ue()?; // max_num_ref_frames
    r.bit()?; // gaps_in_frame_num_value_allowed_flag
    let width_mbs = r.ue()? as u64 + 1;
    let height_map_units = r.ue()? as u64 + 1;
    let frame_mbs_only = r.bit()? as u64;
    if frame_mbs_only == 0 {
        r.bit()?; // mb_adaptive_frame_field_flag
    }
    r.bit()?; // direct_8x8_inference_flag
    let width = width_mbs * 16;
    let height = (2 - frame_mbs_only) * height_map_units * 16;
    let max = crate::limits::MAX_IMAGE_PIXELS;
    if width.saturating_mul(height) > max {
        return Err(format!(
            "SPS declares {width}x{height} pixels (more than the limit of {max})"
        ));
    }
    let (mut w, mut h) = (width, height);
    if r.bit()? == 1 {
        let (cx, cy) = if chroma_format_idc == 0 || separate_planes {
            (1, 2 - frame_mbs_only)
        } else {
            let sub_h = if chroma_format_idc == 1 { 2 } else { 1 };
            let sub_w = if chroma_format_idc == 3 { 1 } else { 2 };
            (sub_w, sub_h * (2 - frame_mbs_only))
        };
        let (left, right, top, bottom) = (
            r.ue()? as u64,
            r.ue()? as u64,
            r.ue()? as u64,
            r.ue()? as u64,
        );
        let cw = (left + right) * cx;
        let ch = (top + bottom) * cy;
        if cw >= w || ch >= h {
            return Err(format!("SPS crops {cw}x{ch} pixels off a {w}x{h} picture"));
        }
        w -= cw;
        h -= ch;
    }
    Ok(SpsInfo {
        profile_idc,
        width: w as u32,
        height: h as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes bits and Exp-Golomb codes, then inserts emulation-prevention bytes.
    #[derive(Default)]
    struct W {
        bits: Vec<u8>,
    }

    impl W {
        fn u(&mut self, n: u32, v: u64) -> &mut Self {
            for i in (0..n).rev() {
                self.bits.push(((v >> i) & 1) as u8);
            }
            self
        }
        fn ue(&mut self, v: u64) -> &mut Self {
            let x = v + 1;
            let n = 64 - x.leading_zeros();
            self.u(n - 1, 0).u(n, x)
        }
        fn nal(&mut self, header: u8) -> Vec<u8> {
            self.u(1, 1);
            while !self.bits.len().is_multiple_of(8) {
                self.bits.push(0);
            }
            let bytes: Vec<u8> = self
                .bits
                .chunks(8)
                .map(|c| c.iter().fold(0, |a, &b| (a << 1) | b))
                .collect();
            let mut out = vec![header];
            let mut zeros = 0;
            for b in bytes {
                if zeros >= 2 && b <= 3 {
                    out.push(3);
                    zeros = 0;
                }
                zeros = if b == 0 { zeros + 1 } else { 0 };
                out.push(b);
            }
            out
        }
    }

    /// A baseline SPS of `w_mbs × h_mbs` macroblocks, progressive, with optional cropping.
    fn baseline(w_mbs: u64, h_mbs: u64, crop: Option<[u64; 4]>) -> Vec<u8> {
        let mut w = W::default();
        w.u(8, 66).u(16, 30).ue(0).ue(0).ue(0).ue(0).ue(1).u(1, 0);
        w.ue(w_mbs - 1).ue(h_mbs - 1).u(1, 1).u(1, 1);
        match crop {
            Some(c) => {
                w.u(1, 1);
                for v in c {
                    w.ue(v);
                }
            }
            None => {
                w.u(1, 0);
            }
        }
        w.u(1, 0); // vui_parameters_present_flag
        w.nal(0x67)
    }

    #[test]
    fn sizes_with_and_without_cropping() {
        let s = parse_sps(&baseline(6, 4, None)).unwrap();
        assert_eq!((s.profile_idc, s.width, s.height), (66, 96, 64));
        // 1920x1088 coded, 8 lines cropped at the bottom (4 units of 2 in 4:2:0).
        let s = parse_sps(&baseline(120, 68, Some([0, 0, 0, 4]))).unwrap();
        assert_eq!((s.width, s.height), (1920, 1080));
    }

    #[test]
    fn high_profile_with_scaling_lists() {
        let mut w = W::default();
        w.u(8, 100).u(16, 40).ue(0);
        w.ue(1).ue(0).ue(0).u(1, 0); // 4:2:0, 8-bit
        w.u(1, 1); // scaling matrix present
        for i in 0..8 {
            if i == 0 {
                w.u(1, 1);
                // Deltas of +1 (se 1 = ue 1): the list never reaches 0, so all 16 are coded.
                for _ in 0..16 {
                    w.ue(1);
                }
            } else {
                w.u(1, 0);
            }
        }
        // log2_max_frame_num_minus4, then pic_order_cnt_type 1 with one reference frame offset.
        w.ue(0).ue(1).u(1, 0).ue(1).ue(0).ue(1).ue(2);
        // 1 reference frame, 40x23 macroblocks, progressive, no cropping, no VUI.
        w.ue(1)
            .u(1, 0)
            .ue(39)
            .ue(22)
            .u(1, 1)
            .u(1, 1)
            .u(1, 0)
            .u(1, 0);
        let nal = w.nal(0x67);
        let s = parse_sps(&nal).unwrap_or_else(|e| panic!("{e}: {nal:02x?}"));
        assert_eq!((s.profile_idc, s.width, s.height), (100, 640, 368));
    }

    #[test]
    fn hostile_parameter_sets_are_refused() {
        let e = parse_sps(&baseline(8192, 8192, None)).unwrap_err();
        assert!(e.contains("131072x131072") && e.contains("limit"), "{e}");
        let e = parse_sps(&baseline(6, 4, Some([24, 24, 0, 0]))).unwrap_err();
        assert!(e.contains("crops"), "{e}");
        let sps = baseline(6, 4, None);
        for cut in 1..sps.len() - 1 {
            assert!(parse_sps(&sps[..cut]).is_err(), "cut at {cut}");
        }
        assert!(parse_sps(&[]).is_err());
        let e = parse_sps(&[0x68, 66, 0, 30]).unwrap_err();
        assert!(e.contains("NAL unit type 8"), "{e}");
        let e = parse_sps(&[0xe7, 66, 0, 30]).unwrap_err();
        assert!(e.contains("forbidden"), "{e}");
        // A run of zero bits longer than any Exp-Golomb code.
        let e = parse_sps(&[0x67, 66, 0, 30, 0, 0, 3, 0, 0, 3, 0, 0, 3, 0, 1]).unwrap_err();
        assert!(e.contains("longer than 32 bits"), "{e}");
        assert!(check_nal_type(&[0x68], 8, "PPS").is_ok());
    }
}
