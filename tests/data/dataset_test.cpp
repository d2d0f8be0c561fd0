// read_dataset: TSV, CSV and JSONL user files, column selection, label sets,
// malformed records, skip_bad_lines and max_samples.
#include "deltatune/data/dataset.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "data_test_util.h"
#include "test_paths.h"

namespace deltatune::data {
namespace {

using test::error_of;
using Names = std::vector<std::string>;

std::vector<std::string> texts(const Dataset& d) {
  std::vector<std::string> out;
  for (const Example& e : d.examples) out.push_back(e.text_a);
  return out;
}

std::vector<int64_t> labels(const Dataset& d) {
  std::vector<int64_t> out;
  for (const Example& e : d.examples) out.push_back(e.label);
  return out;
}

std::vector<std::size_t> lines(const Dataset& d) {
  std::vector<std::size_t> out;
  for (const Example& e : d.examples) out.push_back(e.line);
  return out;
}

class ReadDataset : public ::testing::Test {
 protected:
  // Writes `content` to a scratch file and returns its path as a string.
  std::string file(const std::string& name, const std::string& content) {
    dir_.write(name, content);
    return (dir_.path() / name).string();
  }
  test::ScratchDir dir_;
};

TEST_F(ReadDataset, TsvWithHeaderInfersSortedLabels) {
  const auto path = file("a.tsv", "sentence\tlabel\ngood film\tpos\nawful\tneg\nfine\tpos\n");
  Dataset d = read_dataset(path);
  EXPECT_EQ(d.source, path);
  EXPECT_EQ(d.type, TaskType::kClassification);
  EXPECT_FALSE(d.is_pair);
  EXPECT_EQ(d.label_names, (Names{"neg", "pos"}));
  EXPECT_EQ(texts(d), (Names{"good film", "awful", "fine"}));
  EXPECT_EQ(labels(d), (std::vector<int64_t>{1, 0, 1}));
  EXPECT_EQ(lines(d), (std::vector<std::size_t>{2, 3, 4}));
  EXPECT_EQ(d.records, 3u);
  EXPECT_EQ(d.skipped.count, 0u);
  EXPECT_FALSE(d.examples[0].text_b.has_value());
  EXPECT_EQ(label_counts(d), (std::vector<std::size_t>{1, 2}));
}

TEST_F(ReadDataset, IntegerLabelsSortNumerically) {
  const auto path = file("a.tsv", "text\tlabel\na\t10\nb\t2\nc\t1\nd\t-1\n");
  Dataset d = read_dataset(path);
  EXPECT_EQ(d.label_names, (Names{"-1", "1", "2", "10"}));
  EXPECT_EQ(labels(d), (std::vector<int64_t>{3, 2, 1, 0}));
}

TEST_F(ReadDataset, TsvKeepsQuotesTextAndStripsBomAndCr) {
  // Quotes are ordinary in TSV (GLUE's files hold unbalanced ones); the space
  // before the tab stays (SST-2); CRLF line ends and a BOM are not data.
  const auto path =
      file("a.tsv", "\xEF\xBB\xBFsentence\tlabel\r\nsay \"hi \t1\r\nit's \"quoted\" \t0\r\n");
  Dataset d = read_dataset(path);
  EXPECT_EQ(texts(d), (Names{"say \"hi ", "it's \"quoted\" "}));
  EXPECT_EQ(d.label_names, (Names{"0", "1"}));
}

TEST_F(ReadDataset, ColumnsByNameOrIndexAndPairs) {
  const auto path = file("p.tsv", "id\tq\tp\ty\n7\twho?\the did.\tyes\n8\twhy?\tno idea\tno\n");
  ReadOptions o;
  o.text_a = "q";
  o.text_b = ColumnRef(2);
  o.label = "y";
  Dataset d = read_dataset(path, o);
  EXPECT_TRUE(d.is_pair);
  EXPECT_EQ(d.examples[0].text_a, "who?");
  EXPECT_EQ(d.examples[0].text_b, std::optional<std::string>("he did."));
  EXPECT_EQ(d.label_names, (Names{"no", "yes"}));

  // sentence1 + sentence2 are taken as a pair by default.
  const auto nli = file("n.tsv", "sentence1\tsentence2\tlabel\nA\tB\t1\n");
  Dataset n = read_dataset(nli);
  EXPECT_TRUE(n.is_pair);
  EXPECT_EQ(n.examples[0].text_b, std::optional<std::string>("B"));

  EXPECT_EQ(error_of([&] {
              ReadOptions bad;
              bad.label = "gold";
              read_dataset(path, bad);
            }),
            path +
                ":1: no 'sentence', 'text' or 'sentence1' column: choose text_a "
                "(columns: id, q, p, y)");
  EXPECT_EQ(error_of([&] {
              ReadOptions bad = o;
              bad.label = "gold";
              read_dataset(path, bad);
            }),
            path + ":1: no label column 'gold' (columns: id, q, p, y)");
  EXPECT_EQ(error_of([&] {
              ReadOptions bad = o;
              bad.text_b = ColumnRef(9);
              read_dataset(path, bad);
            }),
            path + ":1: text_b column #9 is out of range (4 columns)");
}

TEST_F(ReadDataset, HeaderlessDefaultsToFirstAndLastColumn) {
  const auto path = file("h.tsv", "x\tsrc\t1\ny\tsrc\t0\n");
  ReadOptions o;
  o.header = false;
  Dataset d = read_dataset(path, o);
  EXPECT_EQ(texts(d), (Names{"x", "y"}));
  EXPECT_EQ(labels(d), (std::vector<int64_t>{1, 0}));
  EXPECT_EQ(lines(d), (std::vector<std::size_t>{1, 2}));
  o.text_a = "sentence";
  EXPECT_EQ(error_of([&] { read_dataset(path, o); }),
            path + ": text_a column 'sentence' is a name, but the file has no header");
}

TEST_F(ReadDataset, RegressionLabelsAreFloats) {
  const auto path = file("r.tsv", "sentence1\tsentence2\tscore\na\tb\t4.75\nc\td\t0\n");
  ReadOptions o;
  o.type = TaskType::kRegression;
  o.label = "score";
  Dataset d = read_dataset(path, o);
  EXPECT_EQ(d.type, TaskType::kRegression);
  EXPECT_TRUE(d.label_names.empty());
  EXPECT_FLOAT_EQ(d.examples[0].score, 4.75f);
  EXPECT_FLOAT_EQ(d.examples[1].score, 0.0f);
  const auto more = file("m.tsv", "text\tlabel\na\t+1.5\nb\t-2e-1\nc\t.5\n");
  o.label.reset();
  Dataset m = read_dataset(more, o);
  EXPECT_FLOAT_EQ(m.examples[0].score, 1.5f);
  EXPECT_FLOAT_EQ(m.examples[1].score, -0.2f);
  EXPECT_FLOAT_EQ(m.examples[2].score, 0.5f);
}

TEST_F(ReadDataset, MalformedRecordsNameFileAndLine) {
  ReadOptions o;
  EXPECT_EQ(error_of([&] { read_dataset(file("c.tsv", "text\tlabel\na\t1\nb\t0\textra\n"), o); }),
            dir_.path().string() + "/c.tsv:3: expected 2 columns, found 3");
  EXPECT_EQ(error_of([&] { read_dataset(file("u.tsv", "text\tlabel\nok\t1\nab\xFF\t0\n"), o); }),
            dir_.path().string() + "/u.tsv:3: invalid UTF-8 (byte 0xFF at column 3)");
  // An overlong encoding and a lone continuation byte are ill-formed too.
  EXPECT_EQ(error_of([&] { read_dataset(file("o.tsv", "text\tlabel\n\xC0\xAF\t1\n"), o); }),
            dir_.path().string() + "/o.tsv:2: invalid UTF-8 (byte 0xC0 at column 1)");
  EXPECT_EQ(error_of([&] { read_dataset(file("l.tsv", "text\tlabel\nx\x80\t1\n"), o); }),
            dir_.path().string() + "/l.tsv:2: invalid UTF-8 (byte 0x80 at column 2)");
  EXPECT_EQ(error_of([&] { read_dataset(file("e.tsv", "text\tlabel\ngood\t1\n  \t0\n"), o); }),
            dir_.path().string() + "/e.tsv:3: empty text in text_a");
  EXPECT_EQ(error_of([&] { read_dataset(file("m.tsv", "text\tlabel\ngood\t\n"), o); }),
            dir_.path().string() + "/m.tsv:2: empty label");
  EXPECT_EQ(error_of([&] { read_dataset(file("z.tsv", ""), o); }),
            dir_.path().string() + "/z.tsv: empty file");
  EXPECT_EQ(error_of([&] { read_dataset(file("h.tsv", "text\tlabel\n"), o); }),
            dir_.path().string() + "/h.tsv: no examples");
  EXPECT_EQ(error_of([&] { read_dataset(dir_.path() / "absent.tsv", o); }),
            dir_.path().string() + "/absent.tsv: no such file");

  ReadOptions reg;
  reg.type = TaskType::kRegression;
  EXPECT_EQ(error_of([&] { read_dataset(file("r.tsv", "text\tlabel\na\t1.5\nb\thigh\n"), reg); }),
            dir_.path().string() + "/r.tsv:3: label 'high' is not a finite number");
  EXPECT_EQ(error_of([&] { read_dataset(file("n.tsv", "text\tlabel\na\tnan\n"), reg); }),
            dir_.path().string() + "/n.tsv:2: label 'nan' is not a finite number");
  EXPECT_EQ(error_of([&] { read_dataset(file("s.tsv", "text\tlabel\na\t2.5x\n"), reg); }),
            dir_.path().string() + "/s.tsv:2: label '2.5x' is not a finite number");
}

TEST_F(ReadDataset, EmptyLinesCarryNoRecordButKeepLineNumbers) {
  const auto path = file("b.tsv", "text\tlabel\n\na\t1\n\n\nb\t0");
  Dataset d = read_dataset(path);
  EXPECT_EQ(lines(d), (std::vector<std::size_t>{3, 6}));
}

TEST_F(ReadDataset, TrainLabelSetIsFixedForDev) {
  Dataset train = read_dataset(file("train.tsv", "text\tlabel\na\tpos\nb\tneg\n"));
  ReadOptions dev_options;
  dev_options.label_names = train.label_names;
  // A dev file with only one of the labels keeps train's ids.
  Dataset dev = read_dataset(file("dev.tsv", "text\tlabel\nc\tpos\n"), dev_options);
  EXPECT_EQ(dev.label_names, train.label_names);
  EXPECT_EQ(labels(dev), (std::vector<int64_t>{1}));
  const auto bad = file("bad.tsv", "text\tlabel\nc\tpos\nd\tmaybe\n");
  EXPECT_EQ(error_of([&] { read_dataset(bad, dev_options); }),
            bad + ":3: unknown label 'maybe' (labels: neg, pos)");
}

TEST_F(ReadDataset, SkipBadLinesCountsAndKeepsGoing) {
  const auto path = file("s.tsv",
                         "text\tlabel\n"
                         "one\t1\n"
                         "two\t0\tx\n"   // 3: columns
                         "thr\xFE\t1\n"  // 4: UTF-8
                         "four\t0\n"
                         "\t1\n"  // 6: empty text
                         "six\t1\n"
                         "seven\n"  // 8: columns
                         "eight\t0\n"
                         "\t\t\n"  // 10: columns
                         "ten\t1\n");
  ReadOptions o;
  o.skip_bad_lines = true;
  Dataset d = read_dataset(path, o);
  EXPECT_EQ(texts(d), (Names{"one", "four", "six", "eight", "ten"}));
  EXPECT_EQ(lines(d), (std::vector<std::size_t>{2, 5, 7, 9, 11}));
  EXPECT_EQ(d.records, 5u);
  EXPECT_EQ(d.skipped.count, 5u);
  EXPECT_EQ(d.skipped.first_lines, (std::vector<std::size_t>{3, 4, 6, 8, 10}));
  ASSERT_EQ(d.skipped.first_errors.size(), 5u);
  EXPECT_EQ(d.skipped.first_errors[0], path + ":3: expected 2 columns, found 3");
  EXPECT_EQ(d.skipped.first_errors[1], path + ":4: invalid UTF-8 (byte 0xFE at column 4)");
  EXPECT_EQ(d.skipped.first_errors[2], path + ":6: empty text in text_a");

  // Only the first kKept are kept; the count goes on.
  std::string many = "text\tlabel\nok\t1\n";
  for (int i = 0; i < 12; ++i) many += "bad\n";
  Dataset m = read_dataset(file("m.tsv", many), o);
  EXPECT_EQ(m.skipped.count, 12u);
  EXPECT_EQ(m.skipped.first_lines, (std::vector<std::size_t>{3, 4, 5, 6, 7}));

  // Nothing good at all is still an error.
  const auto none = file("n.tsv", "text\tlabel\nbad\nworse\n");
  EXPECT_EQ(error_of([&] { read_dataset(none, o); }),
            none + ": no examples (2 bad lines skipped, first: " + none +
                ":2: expected 2 columns, found 1)");
}

TEST_F(ReadDataset, MaxSamplesNestsAndKeepsFileOrder) {
  std::string content = "text\tlabel\n";
  for (int i = 0; i < 300; ++i)
    content += "s" + std::to_string(i) + "\t" + (i == 150 ? "rare" : (i % 2 ? "a" : "b")) + "\n";
  const auto path = file("big.tsv", content);
  auto sample = [&](std::size_t n, uint64_t seed) {
    ReadOptions o;
    o.max_samples = n;
    o.seed = seed;
    return read_dataset(path, o);
  };
  Dataset s100 = sample(100, 7), s200 = sample(200, 7), again = sample(100, 7);
  Dataset other = sample(100, 8);
  ASSERT_EQ(s100.examples.size(), 100u);
  ASSERT_EQ(s200.examples.size(), 200u);
  EXPECT_EQ(s100.records, 300u);
  // Labels come from the whole file, so "rare" keeps its id whether sampled or not.
  EXPECT_EQ(s100.label_names, (Names{"a", "b", "rare"}));
  const auto l100 = lines(s100), l200 = lines(s200);
  EXPECT_TRUE(std::is_sorted(l100.begin(), l100.end()));
  EXPECT_TRUE(std::includes(l200.begin(), l200.end(), l100.begin(), l100.end()));
  EXPECT_EQ(lines(again), l100);
  EXPECT_NE(lines(other), l100);
  // The sample is the first 100 of shuffled_indices(300, 7), in file order.
  Dataset all = sample(0, 7);
  EXPECT_EQ(all.examples.size(), 300u);
  EXPECT_EQ(sample(300, 7).examples.size(), 300u);
  EXPECT_EQ(sample(1000, 7).examples.size(), 300u);
}

TEST_F(ReadDataset, CsvQuoting) {
  const auto path = file("q.csv",
                         "text,label\r\n"
                         "\"Hello, world\",1\r\n"
                         "\"She said \"\"hi\"\"\",0\r\n"
                         "\"two\nlines\",1\n"
                         "plain,0\n"
                         "\"\"\"\",1\n"
                         "x,\"1\"\n");
  Dataset d = read_dataset(path);
  EXPECT_EQ(texts(d), (Names{"Hello, world", "She said \"hi\"", "two\nlines", "plain", "\"", "x"}));
  EXPECT_EQ(lines(d), (std::vector<std::size_t>{2, 3, 4, 6, 7, 8}));
  EXPECT_EQ(labels(d), (std::vector<int64_t>{1, 0, 1, 0, 1, 1}));
}

TEST_F(ReadDataset, CsvMalformed) {
  auto err = [&](const std::string& body) {
    const auto path = file("m.csv", "text,label\n" + body);
    return error_of([&] { read_dataset(path); }).substr(path.size());
  };
  EXPECT_EQ(err("ok,1\n\"abc\"x,1\n"), ":3: unexpected 'x' after a closing quote");
  EXPECT_EQ(err("ok,1\nsay \"hi\",0\n"),
            ":3: quote inside an unquoted field (RFC 4180: quote the whole field and double the "
            "quote)");
  EXPECT_EQ(err("ok,1\n\"never closed,1\nmore,0\n"), ":3: quoted field not closed before the end");
  EXPECT_EQ(err("ok,1\n\"a,b\",1,2\n"), ":3: expected 2 columns, found 3");

  // Skipping resumes at the next physical line.
  const auto path = file("s.csv", "text,label\n\"abc\"x,1\ngood,0\n");
  ReadOptions o;
  o.skip_bad_lines = true;
  Dataset d = read_dataset(path, o);
  EXPECT_EQ(texts(d), (Names{"good"}));
  EXPECT_EQ(d.skipped.first_lines, (std::vector<std::size_t>{2}));
}

TEST_F(ReadDataset, Jsonl) {
  const auto path = file("d.jsonl",
                         "{\"text\": \"good\", \"label\": 1}\n"
                         "\n"
                         "{\"text\": \"bad\", \"label\": 0, \"extra\": [1, 2]}\n"
                         "{\"label\": 1, \"text\": \"caf\\u00e9\"}\n");
  Dataset d = read_dataset(path);
  EXPECT_EQ(texts(d), (Names{"good", "bad", "caf\xC3\xA9"}));
  EXPECT_EQ(d.label_names, (Names{"0", "1"}));
  EXPECT_EQ(labels(d), (std::vector<int64_t>{1, 0, 1}));
  EXPECT_EQ(lines(d), (std::vector<std::size_t>{1, 3, 4}));

  // Pairs and string labels by explicit keys; regression from numbers or numeric strings.
  const auto pairs = file("p.jsonl",
                          "{\"premise\": \"A\", \"hypothesis\": \"B\", \"gold\": \"yes\"}\n"
                          "{\"premise\": \"C\", \"hypothesis\": \"D\", \"gold\": \"no\"}\n");
  ReadOptions o;
  o.text_a = "premise";
  o.text_b = "hypothesis";
  o.label = "gold";
  Dataset p = read_dataset(pairs, o);
  EXPECT_TRUE(p.is_pair);
  EXPECT_EQ(p.examples[1].text_b, std::optional<std::string>("D"));
  EXPECT_EQ(p.label_names, (Names{"no", "yes"}));

  ReadOptions reg;
  reg.type = TaskType::kRegression;
  Dataset r =
      read_dataset(file("r.jsonl",
                        "{\"sentence1\": \"a\", \"sentence2\": \"b\", \"label\": 3.25}\n"
                        "{\"sentence1\": \"c\", \"sentence2\": \"d\", \"label\": \"1e-1\"}\n"),
                   reg);
  EXPECT_TRUE(r.is_pair);
  EXPECT_FLOAT_EQ(r.examples[0].score, 3.25f);
  EXPECT_FLOAT_EQ(r.examples[1].score, 0.1f);
}

TEST_F(ReadDataset, JsonlMalformed) {
  auto err = [&](const std::string& body) {
    const auto path = file("m.jsonl", "{\"text\": \"ok\", \"label\": 1}\n" + body);
    return error_of([&] { read_dataset(path); }).substr(path.size());
  };
  EXPECT_EQ(err("{\"text\": \"x\", \"label\": 1\n"),
            ":2: invalid JSON at column 25: syntax error while parsing object - unexpected "
            "end of input; expected '}'");
  EXPECT_EQ(err("[1, 2]\n"), ":2: expected a JSON object, found array");
  EXPECT_EQ(err("{\"label\": 1}\n"), ":2: missing field 'text'");
  EXPECT_EQ(err("{\"text\": 5, \"label\": 1}\n"),
            ":2: field 'text' must be a string, found number");
  EXPECT_EQ(err("{\"text\": \"x\"}\n"), ":2: missing field 'label'");
  EXPECT_EQ(err("{\"text\": \"x\", \"label\": [1]}\n"),
            ":2: field 'label' must be a string or a number, found array");
  EXPECT_EQ(err("{\"text\": \"\xE2\x82\", \"label\": 1}\n"),
            ":2: invalid UTF-8 (byte 0xE2 at column 11)");
  EXPECT_EQ(err("{\"text\": \"\", \"label\": 1}\n"), ":2: empty text in text_a");
  // Found by the dataset fuzz target (fuzz/regressions/dataset): a number too
  // large for a double escaped as an uncaught exception.
  EXPECT_EQ(err("{\"text\": \"x\", \"label\": 4444444444E4400008}\n"),
            ":2: invalid JSON: number overflow parsing '4444444444E4400008'");

  ReadOptions o;
  o.text_a = ColumnRef(0);
  const auto path = file("i.jsonl", "{\"text\": \"x\", \"label\": 1}\n");
  EXPECT_EQ(error_of([&] { read_dataset(path, o); }),
            path + ": JSONL fields are named, not numbered: #0");
}

TEST_F(ReadDataset, FormatByExtensionOrExplicit) {
  EXPECT_EQ(format_for("a/b.TSV"), Format::kTsv);
  EXPECT_EQ(format_for("b.csv"), Format::kCsv);
  EXPECT_EQ(format_for("b.jsonl"), Format::kJsonl);
  EXPECT_EQ(format_for("b.ndjson"), Format::kJsonl);
  EXPECT_EQ(error_of([] { format_for("b.txt"); }),
            "b.txt: unknown data format '.txt' (expected .tsv, .csv or .jsonl, or choose the "
            "format explicitly)");
  const auto txt = file("d.txt", "text,label\n\"a\tb\",1\n");
  ReadOptions o;
  o.format = Format::kCsv;
  EXPECT_EQ(texts(read_dataset(txt, o)), (Names{"a\tb"}));
}

TEST(ColumnRef, ParseNumbersAsIndexes) {
  EXPECT_TRUE(ColumnRef::parse("3").is_index());
  EXPECT_EQ(ColumnRef::parse("3").index(), 3u);
  EXPECT_FALSE(ColumnRef::parse("sentence").is_index());
  EXPECT_FALSE(ColumnRef::parse("#1 String").is_index());
  EXPECT_FALSE(ColumnRef::parse("-1").is_index());
  EXPECT_EQ(ColumnRef(0).describe(), "#0");
  EXPECT_EQ(ColumnRef("label").describe(), "'label'");
}

}  // namespace
}  // namespace deltatune::data

namespace deltatune::data {
namespace {

TEST(UnlabeledInputs, ReadTextsWithoutALabelColumn) {
  test::ScratchDir tmp;
  tmp.write("inputs.tsv", "sentence\nfirst text\nsecond text\n");
  ReadOptions options;
  options.unlabeled = true;
  options.label_names = {"neg", "pos"};
  Dataset d = read_dataset(tmp.path() / "inputs.tsv", options);
  ASSERT_EQ(d.examples.size(), 2u);
  EXPECT_EQ(d.examples[1].text_a, "second text");
  EXPECT_EQ(d.examples[1].line, 3u);
  tmp.write("inputs.jsonl", "{\"text\": \"a\"}\n{\"text\": \"b\", \"label\": \"whatever\"}\n");
  EXPECT_EQ(read_dataset(tmp.path() / "inputs.jsonl", options).examples.size(), 2u);
  // Without the flag the same file is an error naming the missing column.
  options.unlabeled = false;
  EXPECT_THROW(read_dataset(tmp.path() / "inputs.tsv", options), Error);
}

}  // namespace
}  // namespace deltatune::data
