//! Events per second of three YAML parsers that keep positions, on the files given: each file
//! is parsed to its last event 31 times per parser (interleaved, so the machine's drift hits
//! all three alike); the median and the fastest run are printed. Every parser must produce the
//! same number of events, or the comparison is void and the program fails.

use std::time::Instant;

type Parse = fn(&str) -> usize;

fn saphyr(text: &str) -> usize {
    let mut p = saphyr_parser::Parser::new_from_str(text);
    let mut n = 0;
    while let Some(e) = p.next_event() {
        let (ev, _span) = e.expect("saphyr parses the file");
        if matches!(ev, saphyr_parser::Event::StreamEnd) {
            break;
        }
        n += 1;
    }
    n
}

fn libyaml_safer(text: &str) -> usize {
    let mut bytes = text.as_bytes();
    let mut p = libyaml_safer::Parser::new();
    p.set_input_string(&mut bytes);
    let mut n = 0;
    loop {
        let e = p.parse().expect("libyaml-safer parses the file");
        if matches!(e.data, libyaml_safer::EventData::StreamEnd) {
            break;
        }
        n += 1;
    }
    n
}

fn unsafe_libyaml(text: &str) -> usize {
    use unsafe_libyaml::*;
    // SAFETY: the parser is initialised before use and deleted after; each event is deleted
    // after it is read; the input outlives the parser.
    unsafe {
        let mut parser = std::mem::MaybeUninit::<yaml_parser_t>::uninit();
        assert!(yaml_parser_initialize(parser.as_mut_ptr()).ok);
        let mut parser = parser.assume_init();
        yaml_parser_set_input_string(&mut parser, text.as_ptr(), text.len() as u64);
        let mut n = 0;
        loop {
            let mut ev = std::mem::MaybeUninit::<yaml_event_t>::uninit();
            assert!(yaml_parser_parse(&mut parser, ev.as_mut_ptr()).ok, "unsafe-libyaml parses the file");
            let mut ev = ev.assume_init();
            let end = ev.type_ == YAML_STREAM_END_EVENT;
            yaml_event_delete(&mut ev);
            if end {
                break;
            }
            n += 1;
        }
        yaml_parser_delete(&mut parser);
        n
    }
}

fn main() {
    let files: Vec<String> = std::env::args().skip(1).collect();
    assert!(!files.is_empty(), "usage: yaml-parsers FILE...");
    let parsers: [(&str, Parse); 3] =
        [("saphyr-parser 0.3.4", saphyr), ("libyaml-safer 0.3", libyaml_safer), ("unsafe-libyaml 0.2", unsafe_libyaml)];
    println!("| file | bytes | events | parser | median ms | fastest ms | MB/s (median) | vs saphyr |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{file}: {e}"));
        let events: Vec<usize> = parsers.iter().map(|(_, f)| f(&text)).collect();
        assert!(events.iter().all(|&n| n == events[0]), "{file}: the parsers disagree on the events: {events:?}");
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); parsers.len()];
        for _ in 0..31 {
            for (k, (_, f)) in parsers.iter().enumerate() {
                let t = Instant::now();
                std::hint::black_box(f(std::hint::black_box(&text)));
                times[k].push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let base = median(&mut times[0].clone());
        for (k, (name, _)) in parsers.iter().enumerate() {
            let m = median(&mut times[k]);
            println!(
                "| {file} | {} | {} | {name} | {m:.1} | {:.1} | {:.0} | {:.2}x |",
                text.len(),
                events[0],
                times[k][0],
                text.len() as f64 / m / 1e3,
                base / m
            );
        }
    }
}
