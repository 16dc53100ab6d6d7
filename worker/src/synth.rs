//! `synth` (declared in `rmdistill_stages::synth`, which generates the corpus): the task's word-level tokenizer,
//! built with the ML core's [`rmdistill_ml::Tokenizer`] so that every model stage loads it as it loads any
//! `tokenizer.json`, and both outputs written.

use rmdistill_stages::oracle::SEP;
use rmdistill_stages::port::*;
use rmdistill_stages::synth::generate_corpus;
use rmdistill_stages::table;
use serde_json::Value;
use std::collections::HashMap;

/// The word-level tokenizer over exactly the task's vocabulary (ids: specials, `tldr`, then the words in order).
pub fn task_tokenizer(names: &[String]) -> StageResult<rmdistill_ml::Tokenizer> {
    use rmdistill_ml::tokenizer::{EOS_TOKEN, PAD_TOKEN, UNK_TOKEN};
    use tokenizers::models::wordlevel::WordLevel;
    let mut vocab: Vec<String> = vec![EOS_TOKEN.into(), PAD_TOKEN.into(), UNK_TOKEN.into(), SEP.into()];
    vocab.extend(names.iter().cloned());
    let map: HashMap<String, u32> = vocab.iter().enumerate().map(|(i, w)| (w.clone(), i as u32)).collect();
    let model = WordLevel::builder()
        .vocab(map.into_iter().collect())
        .unk_token(UNK_TOKEN.into())
        .build()
        .map_err(|e| StageError::failed(e.to_string()))?;
    let mut tok = tokenizers::Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::whitespace::WhitespaceSplit));
    tok.with_decoder(Some(tokenizers::decoders::DecoderWrapper::WordPiece(
        tokenizers::decoders::wordpiece::WordPiece::new("##".into(), false),
    )));
    let _ = tok.add_special_tokens(vec![
        tokenizers::AddedToken::from(EOS_TOKEN, true),
        tokenizers::AddedToken::from(PAD_TOKEN, true),
        tokenizers::AddedToken::from(UNK_TOKEN, true),
    ]);
    Ok(rmdistill_ml::Tokenizer::from_inner(tok))
}

pub fn run(ctx: &dyn Ctx) -> StageResult<Value> {
    let (batch, summary, names) = generate_corpus(ctx.params())?;
    let tok = task_tokenizer(&names)?;
    let dir = ctx.output_path("tokenizer");
    std::fs::create_dir_all(&dir)?;
    tok.save(&dir)?;
    table::write_table(&ctx.output_path("corpus"), &batch, &table::summary_kv("synth", &summary))?;
    ctx.progress(batch.num_rows() as u64, batch.num_rows() as u64);
    // as numbers: a JSON value prints every digit whatever the precision asked
    let f = |k: &str| summary[k].as_f64().unwrap_or(f64::NAN);
    ctx.log(&format!(
        "{} documents, {:.1} words each on average, {:.2} salient; demonstrations: {:.2} words, oracle {:.3}",
        summary["docs"],
        f("mean_doc_len"),
        f("mean_salient"),
        f("mean_summary_len"),
        f("mean_summary_oracle")
    ));
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_tokenizer_covers_the_vocabulary() {
        let (b1, _, names) =
            generate_corpus(serde_json::json!({"n_docs": 20, "seed": 3}).as_object().unwrap()).unwrap();
        let prompts = rmdistill_stages::data_io::strings(&b1, "prompt", std::path::Path::new("t"), true).unwrap();
        let tok = task_tokenizer(&names).unwrap();
        assert_eq!(tok.vocab_size(), 304);
        let ids = tok.encode(&prompts[0]).unwrap();
        assert!(ids.iter().all(|&i| i >= 3), "no unknown words");
        assert_eq!(tok.decode(&ids, true).unwrap(), prompts[0]);
        assert_eq!(tok.eos_id, Some(0));
        assert_eq!(tok.pad_id, Some(1));
    }
}
