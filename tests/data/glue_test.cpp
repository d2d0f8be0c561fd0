// read_glue on the real GLUE TSVs ($GLUE_DIR): record counts and label
// distributions as listed in $GLUE_DIR/SOURCES.md (the official sizes, which
// HF datasets' glue configs also have), and the official layouts of the
// files absent here (QQP, MNLI, QNLI train) from snippets written below.
#include "deltatune/data/glue.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <numeric>

#include "data_test_util.h"
#include "test_paths.h"

namespace deltatune::data {
namespace {

namespace fs = std::filesystem;
using test::error_of;
using Counts = std::vector<std::size_t>;

struct Expected {
  const char* task;
  const char* split;
  std::size_t records;
  Counts counts;  // by HF label id
};

TEST(Glue, PresentFilesHaveTheOfficialCountsAndLabels) {
  const fs::path dir = test::glue_dir();
  ASSERT_FALSE(dir.empty());
  // SOURCES.md lists "1: 6023, 0: 2528" for CoLA train etc.; label id 0 is the
  // file's 0 (unacceptable, negative, not_equivalent), and for RTE/QNLI id 0
  // is entailment.
  const std::vector<Expected> rows = {
      {"CoLA", "train", 8551, {2528, 6023}},     {"CoLA", "dev", 1043, {322, 721}},
      {"SST-2", "train", 67349, {29780, 37569}}, {"SST-2", "dev", 872, {428, 444}},
      {"MRPC", "train", 3668, {1194, 2474}},     {"MRPC", "dev", 408, {129, 279}},
      {"RTE", "train", 2490, {1249, 1241}},      {"RTE", "dev", 277, {146, 131}},
      {"QNLI", "dev", 5463, {2702, 2761}},
  };
  for (const Expected& e : rows) {
    SCOPED_TRACE(std::string(e.task) + " " + e.split);
    Dataset d = read_glue(dir, e.task, e.split);
    EXPECT_EQ(d.examples.size(), e.records);
    EXPECT_EQ(d.records, e.records);
    EXPECT_EQ(d.skipped.count, 0u);
    EXPECT_EQ(label_counts(d), e.counts);
    EXPECT_EQ(d.label_names, find_glue_task(e.task).label_names);
    EXPECT_EQ(d.is_pair, find_glue_task(e.task).is_pair);
    for (const Example& x : d.examples) {
      ASSERT_EQ(x.text_b.has_value(), d.is_pair) << "line " << x.line;
      ASSERT_FALSE(x.text_a.empty()) << "line " << x.line;
    }
  }
}

TEST(Glue, StsbScores) {
  const fs::path dir = test::glue_dir();
  ASSERT_FALSE(dir.empty());
  // SOURCES.md: train 5749 records, mean 2.701; dev 1500, mean 2.364; scores 0-5.
  // Means to 1e-4 from Python's csv module (QUOTE_NONE) over the same files:
  // train 2.700999..., dev 2.363907...
  for (const auto& [split, records, mean] :
       {std::tuple{"train", 5749u, 2.7009990}, std::tuple{"dev", 1500u, 2.3639076}}) {
    Dataset d = read_glue(dir, "STS-B", split);
    ASSERT_EQ(d.examples.size(), records) << split;
    EXPECT_EQ(d.type, TaskType::kRegression);
    double sum = 0, lo = 5, hi = 0;
    for (const Example& e : d.examples) {
      sum += e.score;
      lo = std::min<double>(lo, e.score);
      hi = std::max<double>(hi, e.score);
    }
    EXPECT_NEAR(sum / static_cast<double>(records), mean, 1e-4) << split;
    EXPECT_EQ(lo, 0.0);
    EXPECT_EQ(hi, 5.0);
  }
  Dataset dev = read_glue(dir, "stsb", "dev");
  EXPECT_EQ(dev.examples.front().text_a, "A man with a hard hat is dancing.");
  EXPECT_EQ(dev.examples.front().text_b,
            std::optional<std::string>("A man wearing a hard hat is dancing."));
  EXPECT_FLOAT_EQ(dev.examples.front().score, 5.0f);
  EXPECT_EQ(dev.examples.back().line, 1501u);
}

TEST(Glue, FileQuirks) {
  const fs::path dir = test::glue_dir();
  ASSERT_FALSE(dir.empty());
  // SST-2: the space before the tab is part of the sentence, as HF keeps it.
  Dataset sst = read_glue(dir, "sst2", "train");
  EXPECT_EQ(sst.examples.front().text_a, "hide new secretions from the parental units ");
  EXPECT_EQ(sst.examples.front().line, 2u);
  EXPECT_EQ(sst.examples.back().line, 67350u);
  // CoLA: no header (line 1 is data), 4 columns, dev without a final newline.
  Dataset cola = read_glue(dir, "CoLA", "dev");
  EXPECT_EQ(cola.examples.front().line, 1u);
  EXPECT_EQ(cola.examples.front().text_a, "The sailors rode the breeze clear of the rocks.");
  EXPECT_EQ(cola.examples.back().line, 1043u);
  EXPECT_EQ(cola.examples.back().text_a, "John talked to Bill about himself.");
  // MRPC: BOM before "Quality"; unbalanced quotes are text.
  Dataset mrpc = read_glue(dir, "MRPC", "dev");
  EXPECT_EQ(mrpc.examples.front().text_b,
            std::optional<std::string>(
                "\"The foodservice pie business does not fit our long-term growth strategy."));
  EXPECT_EQ(mrpc.examples.front().label, 1);
}

TEST(Glue, MaxSamplesAndSkipOptionsPassThrough) {
  const fs::path dir = test::glue_dir();
  ASSERT_FALSE(dir.empty());
  GlueReadOptions o;
  o.max_samples = 100;
  o.seed = 3;
  Dataset small = read_glue(dir, "RTE", "train", o);
  o.max_samples = 200;
  Dataset large = read_glue(dir, "RTE", "train", o);
  EXPECT_EQ(small.examples.size(), 100u);
  EXPECT_EQ(small.records, 2490u);
  std::vector<std::size_t> a, b;
  for (const Example& e : small.examples) a.push_back(e.line);
  for (const Example& e : large.examples) b.push_back(e.line);
  EXPECT_TRUE(std::includes(b.begin(), b.end(), a.begin(), a.end()));
}

// A GLUE_DIR with the official layouts of files not present in the shared copy.
class GlueLayouts : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* t : {"QQP", "MNLI", "QNLI", "WNLI"}) fs::create_directory(dir_.path() / t);
  }
  void write(const std::string& name, const std::string& content) { dir_.write(name, content); }
  test::ScratchDir dir_;
};

TEST_F(GlueLayouts, Qqp) {
  write("QQP/train.tsv",
        "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
        "133273\t213221\t213222\tHow is the life of a math student?\tWhich level of prepration "
        "is enough?\t0\n"
        "402555\t536040\t536041\tHow do I control my horny emotions?\tHow do you control your "
        "horniness?\t1\n"
        "201841\t303951\t174364\tHow can I develop android app?\t\t0\n");
  Dataset d = read_glue(dir_.path(), "qqp", "train");
  ASSERT_EQ(d.examples.size(), 3u);
  EXPECT_TRUE(d.is_pair);
  EXPECT_EQ(d.label_names, (std::vector<std::string>{"not_duplicate", "duplicate"}));
  EXPECT_EQ(d.examples[0].text_a, "How is the life of a math student?");
  EXPECT_EQ(d.examples[1].text_b, std::optional<std::string>("How do you control your horniness?"));
  EXPECT_EQ(d.examples[1].label, 1);
  // An empty question is kept, as HF datasets keeps it (official counts include such rows).
  EXPECT_EQ(d.examples[2].text_b, std::optional<std::string>(""));
  write("QQP/dev.tsv", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n1\t2\t3\ta\tb\t2\n");
  EXPECT_EQ(error_of([&] { read_glue(dir_.path(), "qqp", "dev"); }),
            (dir_.path() / "QQP" / "dev.tsv").string() + ":2: unknown label '2' (labels: 0, 1)");
}

TEST_F(GlueLayouts, MnliTrainAndBothDevSets) {
  const std::string parses = "( ( a b ) c )\t( d e )\t(ROOT (S a))\t(ROOT (S d))";
  write("MNLI/train.tsv",
        "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
        "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n"
        "0\t31193\t31193n\tgovernment\t" +
            parses +
            "\tConceptually cream skimming has two basic dimensions.\tProduct and geography are "
            "what make cream skimming work. \tneutral\tneutral\n"
            "1\t101457\t101457e\ttelephone\t" +
            parses +
            "\tyou know during the season\tYou lose the things.\tentailment\tentailment\n"
            "2\t134793\t134793c\tfiction\t" +
            parses +
            "\tOne of our number will carry out.\tA member will "
            "ignore.\tcontradiction\tcontradiction\n");
  const std::string dev_header =
      "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
      "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\t"
      "label5\tgold_label\n";
  write("MNLI/dev_matched.tsv",
        dev_header + "0\t63735\t63735n\tslate\t" + parses +
            "\tThe new rights are nice enough\tEveryone really likes the newest benefits "
            "\tneutral\tentailment\tneutral\tneutral\tneutral\tneutral\n");
  write("MNLI/dev_mismatched.tsv",
        dev_header + "0\t75290\t75290c\tletters\t" + parses +
            "\tYour contribution helped make it possible.\tYour contributions were of no "
            "help.\tcontradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction\t"
            "contradiction\n");
  Dataset train = read_glue(dir_.path(), "MNLI", "train");
  ASSERT_EQ(train.examples.size(), 3u);
  EXPECT_EQ(train.examples[0].text_a, "Conceptually cream skimming has two basic dimensions.");
  EXPECT_EQ(
      train.examples[0].text_b,
      std::optional<std::string>("Product and geography are what make cream skimming work. "));
  // HF ids: entailment 0, neutral 1, contradiction 2.
  EXPECT_EQ(train.examples[0].label, 1);
  EXPECT_EQ(train.examples[1].label, 0);
  EXPECT_EQ(train.examples[2].label, 2);

  Dataset matched = read_glue(dir_.path(), "mnli", "dev");  // dev = dev_matched
  ASSERT_EQ(matched.examples.size(), 1u);
  EXPECT_EQ(matched.examples[0].label, 1);  // gold_label, not label1
  EXPECT_EQ(matched.source, (dir_.path() / "MNLI" / "dev_matched.tsv").string());
  Dataset mismatched = read_glue(dir_.path(), "mnli", "validation_mismatched");
  EXPECT_EQ(mismatched.examples[0].label, 2);
  EXPECT_EQ(mismatched.examples[0].text_a, "Your contribution helped make it possible.");
}

TEST_F(GlueLayouts, QnliTrain) {
  write("QNLI/train.tsv",
        "index\tquestion\tsentence\tlabel\n"
        "0\tWhen did the third Digimon series begin?\tUnlike the two seasons before it, \"Digimon "
        "Tamers\" takes a darker approach.\tnot_entailment\n"
        "1\tWhich missile batteries often have individual launchers?\tWhen MANPADS is operated by "
        "specialists, batteries may have several dozen teams.\tentailment\n");
  Dataset d = read_glue(dir_.path(), "QNLI", "train");
  ASSERT_EQ(d.examples.size(), 2u);
  EXPECT_EQ(d.examples[0].label, 1);
  EXPECT_EQ(d.examples[1].label, 0);
  EXPECT_EQ(d.examples[0].text_b,
            std::optional<std::string>("Unlike the two seasons before it, \"Digimon Tamers\" "
                                       "takes a darker approach."));
}

TEST_F(GlueLayouts, ErrorsNameFileLineAndField) {
  const std::string qnli = (dir_.path() / "QNLI" / "train.tsv").string();
  write("QNLI/train.tsv",
        "index\tquestion\tsentence\tlabel\n0\tq?\ts.\tentailment\n1\tq?\ts.\tentails\n2\tq?\n");
  EXPECT_EQ(error_of([&] { read_glue(dir_.path(), "qnli", "train"); }),
            qnli + ":3: unknown label 'entails' (labels: entailment, not_entailment)");
  GlueReadOptions skip;
  skip.skip_bad_lines = true;
  Dataset d = read_glue(dir_.path(), "qnli", "train", skip);
  EXPECT_EQ(d.examples.size(), 1u);
  EXPECT_EQ(d.skipped.count, 2u);
  EXPECT_EQ(d.skipped.first_errors[1], qnli + ":4: expected 4 columns, found 2");

  write("QNLI/dev.tsv", "idx\tquestion\ttext\tlabel\n");
  EXPECT_EQ(error_of([&] { read_glue(dir_.path(), "qnli", "dev"); }),
            (dir_.path() / "QNLI" / "dev.tsv").string() +
                ":1: no text_b column 'sentence' (columns: idx, question, text, label)");
  EXPECT_EQ(error_of([&] { read_glue(dir_.path(), "qqp", "train"); }),
            (dir_.path() / "QQP" / "train.tsv").string() + ": no such file");
  EXPECT_EQ(error_of([&] { read_glue(dir_.path(), "wnli", "train"); }),
            "task 'WNLI' is not supported (left out of GLUE training, as in the BitFit paper)");
  EXPECT_EQ(error_of([&] { read_glue(dir_.path(), "rte", "dev_matched"); }),
            "RTE: unknown split 'dev_matched' (valid: train, dev)");
  EXPECT_EQ(error_of([&] { read_glue(dir_.path(), "mnli", "test_matched"); }),
            "MNLI: split 'test_matched': GLUE test files have no labels (use train or dev)");
}

TEST(Glue, FileNamesAndDirFromEnv) {
  EXPECT_EQ(glue_file("/g", find_glue_task("sst2"), "dev"), fs::path("/g/SST-2/dev.tsv"));
  EXPECT_EQ(glue_file("/g", find_glue_task("mnli"), "dev_mismatched"),
            fs::path("/g/MNLI/dev_mismatched.tsv"));
  EXPECT_EQ(glue_file("/g", find_glue_task("STS-B"), "Train"), fs::path("/g/STS-B/train.tsv"));

  const char* saved = std::getenv("GLUE_DIR");
  const std::string restore = saved ? saved : "";
  ::setenv("GLUE_DIR", "/data/glue", 1);
  EXPECT_EQ(glue_dir_from_env(), fs::path("/data/glue"));
  ::unsetenv("GLUE_DIR");
  EXPECT_EQ(error_of([] { glue_dir_from_env(); }),
            "GLUE_DIR is not set: set it to the directory holding <TASK>/{train,dev}.tsv (or pass "
            "the directory explicitly)");
  if (saved) ::setenv("GLUE_DIR", restore.c_str(), 1);
}

}  // namespace
}  // namespace deltatune::data
