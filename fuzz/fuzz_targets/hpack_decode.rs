//! Fuzzes the HPACK decoder (`meltemi_sdk::hpack`) with arbitrary header blocks, under a
//! dynamic table of fuzz-chosen size (0 is what the front advertises; larger ones exercise
//! insertions, evictions and size updates), and checks that Huffman decoding inverts Huffman
//! encoding for any bytes.
//!
//! Nothing may panic; a decoded list never passes the list limit; the table never grows past
//! the size allowed.
//!
//! Input: one byte choosing the table size and list limit, then blocks separated by 0xff 0x00.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meltemi_sdk::hpack::{huffman_decode, huffman_encode, Decoder};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, data)) = data.split_first() else {
        return;
    };
    let table = [0usize, 64, 256, 4096][usize::from(sel & 3)];
    let max_list = [16usize, 256, 64 << 10][usize::from((sel >> 2) % 3)];
    let mut decoder = Decoder::with_table_size(table);
    for block in data.split(|b| *b == 0xff) {
        if let Ok(fields) = decoder.decode(block, max_list) {
            let total: usize = fields.iter().map(|(n, v)| n.len() + v.len()).sum();
            assert!(total <= max_list, "{total} decoded bytes over {max_list}");
        }
        assert!(decoder.table_size() <= table, "table over its size");
    }
    let mut encoded = Vec::new();
    huffman_encode(data, &mut encoded);
    let mut decoded = Vec::new();
    huffman_decode(&encoded, &mut decoded).expect("our own Huffman code decodes");
    assert_eq!(decoded, data);
});
