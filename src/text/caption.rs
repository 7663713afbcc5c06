//! GroundingDINO caption rules that do not need the vocabulary.

/// The caption the official model feeds the tokenizer: the prompt unchanged if it ends with `'.'`,
/// else the prompt with `'.'` appended (no space, no stripping: `"a cat.  "` becomes `"a cat.  ."`).
pub fn fed_caption(prompt: &str) -> String {
    if prompt.ends_with('.') {
        prompt.to_string()
    } else {
        format!("{prompt}.")
    }
}

/// Python's `str.isspace` set (used by `str.split()`): Unicode White_Space plus the ASCII
/// information separators U+001C..U+001F, which Rust does not count as whitespace.
fn is_py_whitespace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// The official demo's normalisation `' '.join(text.lower().split())`: lower-case, drop leading
/// and trailing whitespace, collapse inner runs of whitespace to one space.
pub fn demo_normalize(text: &str) -> String {
    let lower = text.to_lowercase();
    let mut out = String::with_capacity(lower.len());
    for word in lower.split(is_py_whitespace).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// The sub-sentence self-attention mask and position ids of
/// `bertwarper.generate_masks_with_special_tokens_and_transfer_map`, for one sequence whose
/// special tokens (`[CLS]`, `[SEP]`, `.`, `?`) are flagged in `special`.
///
/// Returns the `L × L` row-major mask (true = may attend) and the position ids. The mask starts as
/// the identity; walking the special tokens with `prev = 0`, a special token at column 0 or `L−1`
/// only sees itself (position 0); any other at `c` makes `prev+1..=c` one fully visible block with
/// positions `0..c−prev−1`; then `prev = c`.
pub fn sub_sentence_mask(special: &[bool]) -> (Vec<bool>, Vec<i64>) {
    sub_sentence_mask_cut(special, special.len())
}

/// [`sub_sentence_mask`] of the full sequence, cut to its first `keep` positions (the official
/// order: build on the full sequence, then truncate). Only the kept `keep × keep` corner is ever
/// materialised, so a huge prompt costs no quadratic memory.
pub fn sub_sentence_mask_cut(special: &[bool], keep: usize) -> (Vec<bool>, Vec<i64>) {
    let l = special.len();
    let k = keep.min(l);
    let mut mask = vec![false; k * k];
    for i in 0..k {
        mask[i * k + i] = true;
    }
    let mut pos = vec![0i64; k];
    let mut prev = 0usize;
    for (c, _) in special.iter().enumerate().filter(|(_, &s)| s) {
        if c == 0 || c == l - 1 {
            // Already on the diagonal with position 0.
        } else {
            let hi = c.min(k.saturating_sub(1));
            for i in prev + 1..=hi {
                for j in prev + 1..=hi {
                    mask[i * k + j] = true;
                }
                pos[i] = (i - prev - 1) as i64;
            }
        }
        prev = c;
        if prev + 1 >= k {
            break;
        }
    }
    (mask, pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn period_rule() {
        assert_eq!(fed_caption("a cat"), "a cat.");
        assert_eq!(fed_caption("a cat."), "a cat.");
        assert_eq!(fed_caption("a cat.  "), "a cat.  .");
        assert_eq!(fed_caption(""), ".");
    }

    #[test]
    fn spec_example_man_on_left() {
        // docs/model.md (Text): "[CLS] man on left . [SEP]" → p = [0, 0, 1, 2, 3, 0], blocks {0}, {1..4}, {5}.
        let special = [true, false, false, false, true, true];
        let (m, p) = sub_sentence_mask(&special);
        assert_eq!(p, vec![0, 0, 1, 2, 3, 0]);
        let rows: Vec<String> = m
            .chunks(6)
            .map(|r| r.iter().map(|&b| if b { '1' } else { '0' }).collect())
            .collect();
        assert_eq!(
            rows,
            ["100000", "011110", "011110", "011110", "011110", "000001"]
        );
    }

    #[test]
    fn cut_equals_full_then_cut() {
        let special = [true, false, true, false, false, true, false, true, true];
        let (full, fp) = sub_sentence_mask(&special);
        let l = special.len();
        for keep in 0..=l + 1 {
            let (m, p) = sub_sentence_mask_cut(&special, keep);
            let k = keep.min(l);
            let want: Vec<bool> = (0..k)
                .flat_map(|i| full[i * l..i * l + k].to_vec())
                .collect();
            assert_eq!(m, want, "keep {keep}");
            assert_eq!(p, fp[..k].to_vec(), "keep {keep}");
        }
    }

    #[test]
    fn python_split_whitespace() {
        assert_eq!(demo_normalize("  A\tB\u{1f}C\n "), "a b c");
        assert_eq!(demo_normalize("   "), "");
    }
}
