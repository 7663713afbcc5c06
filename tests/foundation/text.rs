//! Tokenizer and caption rules against the official fixture `tests/fixtures/tokenizer/cases.json`
//! (22 cases produced by the official HuggingFace tokenizer + GroundingDINO's mask code).

use referdino::text::{demo_normalize, Tokenizer, MAX_TEXT_LEN};
use serde_json::Value;

fn cases() -> Value {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tokenizer/cases.json"
    );
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn i64s(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

#[test]
fn all_fixture_cases_match_exactly() {
    let doc = cases();
    let tok = Tokenizer::bundled().unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 22);
    for (n, c) in cases.iter().enumerate() {
        let text = c["text"].as_str().unwrap();
        let enc = tok.encode(text, MAX_TEXT_LEN).unwrap();
        let ctx = format!("case {n} {:?}", &text.chars().take(40).collect::<String>());
        assert_eq!(
            enc.caption,
            c["caption_fed"].as_str().unwrap(),
            "{ctx}: caption"
        );
        let tokens: Vec<String> = c["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect();
        assert_eq!(enc.tokens, tokens, "{ctx}: tokens");
        assert_eq!(enc.input_ids, i64s(&c["input_ids"]), "{ctx}: input_ids");
        assert_eq!(
            enc.attention_mask,
            i64s(&c["attention_mask"]),
            "{ctx}: attention_mask"
        );
        assert_eq!(
            enc.token_type_ids,
            i64s(&c["token_type_ids"]),
            "{ctx}: token_type_ids"
        );
        assert_eq!(
            enc.position_ids,
            i64s(&c["position_ids"]),
            "{ctx}: position_ids"
        );
        let rows: Vec<String> = (0..enc.len).map(|i| enc.mask_row_string(i)).collect();
        let want: Vec<String> = c["text_self_attention_mask"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_string())
            .collect();
        assert_eq!(rows, want, "{ctx}: text_self_attention_mask");
        assert_eq!(enc.len, tokens.len(), "{ctx}: len");
        assert_eq!(
            enc.truncated,
            c["truncated"].as_bool().unwrap(),
            "{ctx}: truncated"
        );
        assert_eq!(
            demo_normalize(text),
            c["demo_normalized"].as_str().unwrap(),
            "{ctx}: demo normalisation"
        );
        if enc.truncated {
            // The cut happens after the mask is built on the full sequence: check the full sequence too.
            let full = tok.encode(text, usize::MAX).unwrap();
            assert_eq!(
                full.len as u64,
                c["num_tokens_untruncated"].as_u64().unwrap(),
                "{ctx}"
            );
            assert_eq!(
                full.input_ids,
                i64s(&c["input_ids_untruncated"]),
                "{ctx}: untruncated ids"
            );
            assert_eq!(
                full.position_ids,
                i64s(&c["position_ids_untruncated"]),
                "{ctx}: untruncated positions"
            );
        } else {
            assert_eq!(
                enc.len as u64,
                c["num_tokens_untruncated"].as_u64().unwrap(),
                "{ctx}"
            );
        }
    }
}

#[test]
fn special_token_ids_are_groundingdino_s() {
    let doc = cases();
    let tok = Tokenizer::bundled().unwrap();
    let want: Vec<u32> = doc["groundingdino_special_tokens"]["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(tok.special_ids().to_vec(), want);
}

#[test]
fn vocab_txt_pipeline_matches_all_cases_too() {
    // The same tokenizer rebuilt from the bare vocab.txt (no tokenizer.json) must agree on every case.
    let p = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tokenizer/vocab.txt"
    ));
    let from_vocab = Tokenizer::from_file(p).unwrap();
    let bundled = Tokenizer::bundled().unwrap();
    for c in cases()["cases"].as_array().unwrap() {
        let text = c["text"].as_str().unwrap();
        assert_eq!(
            from_vocab.encode(text, 256).unwrap(),
            bundled.encode(text, 256).unwrap(),
            "{text:?}"
        );
    }
    let e = Tokenizer::from_vocab(b"hello\nworld\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("[CLS]"), "{e}");
}

#[test]
fn tokenizer_from_file_equals_bundled() {
    let p = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tokenizer/tokenizer.json"
    ));
    let a = Tokenizer::from_file(p)
        .unwrap()
        .encode("the dog on the left. a cat?", 256)
        .unwrap();
    let b = Tokenizer::bundled()
        .unwrap()
        .encode("the dog on the left. a cat?", 256)
        .unwrap();
    assert_eq!(a, b);
}

#[test]
fn fixture_caption_of_the_tiny_model() {
    // tests/fixtures/referdino-tiny/README.md: caption fed as "the red ball rolling to the left." (10 tokens).
    let enc = Tokenizer::bundled()
        .unwrap()
        .encode("the red ball rolling to the left", 256)
        .unwrap();
    assert_eq!(enc.caption, "the red ball rolling to the left.");
    assert_eq!(
        enc.tokens,
        ["[CLS]", "the", "red", "ball", "rolling", "to", "the", "left", ".", "[SEP]"]
    );
    let t = enc.self_attention_mask_tensor().unwrap();
    assert_eq!(t.shape(), &[1, 10, 10]);
    assert_eq!(enc.input_ids_tensor().unwrap().shape(), &[1, 10]);
}

#[test]
fn tensors_match_the_model_fixture_inputs() {
    // The text inputs in inputs.safetensors come from the official infer(); ours must equal them.
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/referdino-tiny/inputs.safetensors"
    );
    let bytes = std::fs::read(p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let enc = Tokenizer::bundled()
        .unwrap()
        .encode("the red ball rolling to the left", 256)
        .unwrap();
    let ids = |name: &str| -> Vec<i64> {
        st.tensor(name)
            .unwrap()
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    assert_eq!(enc.input_ids, ids("input_ids"));
    assert_eq!(enc.attention_mask, ids("attention_mask"));
    assert_eq!(enc.token_type_ids, ids("token_type_ids"));
    assert_eq!(enc.position_ids, ids("position_ids"));
    let mask: Vec<bool> = st
        .tensor("text_self_attention_mask")
        .unwrap()
        .data()
        .iter()
        .map(|&b| b != 0)
        .collect();
    assert_eq!(enc.self_attention_mask, mask);
    let special: Vec<i64> = ids("special_token_ids");
    let ours: Vec<i64> = Tokenizer::bundled()
        .unwrap()
        .special_ids()
        .iter()
        .map(|&x| x as i64)
        .collect();
    assert_eq!(ours, special);
}
