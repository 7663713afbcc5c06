//! The command protocol: the bounded line reader over arbitrary bytes, then the line parser, then
//! the controller applying what parsed.
#![no_main]
use libfuzzer_sys::fuzz_target;
use referdino::pipeline::commands::{parse_line, Controller, Limits, LineReader, RuntimeStats};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_line_bytes: 256,
        max_prompt_bytes: 64,
    };
    let mut reader = LineReader::new(limits.max_line_bytes);
    let mut input = std::io::BufReader::with_capacity(7, data);
    let mut ctl = Controller::default();
    let stats = RuntimeStats::default();
    for _ in 0..10_000 {
        match reader.next_line(&mut input) {
            Ok(referdino::pipeline::commands::Line::Eof) | Err(_) => break,
            Ok(referdino::pipeline::commands::Line::Text(l)) => {
                if let Ok(Some(req)) = parse_line(l, &limits) {
                    let reply = ctl.apply(&req, &stats);
                    let _ = reply.to_line();
                }
            }
            Ok(_) => {}
        }
    }
    // The whole input as one line too (the parser on its own).
    let _ = parse_line(data, &limits);
});
